"""pyproject.toml's packaging, read against the tree: every package listed, the shipped
files mapped from their one copy, and console scripts whose help names them.

The built wheel itself is checked by tests/integration/test_install.py.
"""

from __future__ import annotations

import ast
import importlib
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS: dict[str, Any] = PROJECT["tool"]["setuptools"]
SCRIPTS: dict[str, str] = PROJECT["project"]["scripts"]
DATA_FOLDERS = {"pipeline.migrations": "migrations", "pipeline.schemas": "schemas"}


def _tree_packages() -> set[str]:
    """Every folder of pipeline/ and producers/ holding a file, as a dotted name."""
    found: set[str] = set()
    for top in ("pipeline", "producers"):
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                found.add(".".join(path.parent.relative_to(ROOT).parts))
    return found


def test_every_package_of_the_tree_is_listed() -> None:
    listed = set(SETUPTOOLS["packages"])
    assert listed == _tree_packages() | set(DATA_FOLDERS), (
        "pyproject.toml's [tool.setuptools] packages must list every package folder "
        "(and the two data packages) or the wheel leaves it out"
    )


def test_the_shipped_folders_are_mapped_from_their_one_copy() -> None:
    assert SETUPTOOLS["package-dir"] == DATA_FOLDERS
    for package, folder in DATA_FOLDERS.items():
        assert (ROOT / folder).is_dir(), folder
        # No second copy inside the package tree.
        assert not (ROOT / package.replace(".", "/")).exists(), package


@pytest.mark.parametrize(
    ("package", "folder", "needed"),
    [
        ("pipeline.migrations", "migrations", "*.sql"),
        ("pipeline.schemas", "schemas", "*.schema.json"),
        ("pipeline.ops.kafka", "pipeline/ops/kafka", "pom.xml"),
    ],
)
def test_package_data_takes_every_file_the_product_reads(
    package: str, folder: str, needed: str
) -> None:
    patterns = SETUPTOOLS["package-data"][package]
    files = sorted((ROOT / folder).glob(needed))
    assert files, f"nothing matches {folder}/{needed}"
    for path in files:
        assert any(fnmatch(path.name, pattern) for pattern in patterns), (path, patterns)


def test_the_resources_module_is_a_leaf() -> None:
    # producers may import it (test_layout.py): it must not pull the sink or the worker in.
    tree = ast.parse((ROOT / "pipeline" / "resources.py").read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    outside = {
        name
        for name in imported
        if name and name.split(".")[0] not in sys.stdlib_module_names and name != "__future__"
    }
    assert outside == {"pipeline.errors"}, outside


@pytest.mark.parametrize(
    ("script", "usage"),
    [
        ("pipeline", "usage: pipeline [-h]"),
        ("producers", "usage: producers [-h]"),
        ("pipeline-gateway", "usage: pipeline-gateway [-h]"),
    ],
)
def test_each_console_script_names_itself_in_its_help(
    script: str, usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module, _, function = SCRIPTS[script].partition(":")
    entry = getattr(importlib.import_module(module), function)
    argv = sys.argv
    sys.argv = [script, "--help"]
    try:
        with pytest.raises(SystemExit) as done:
            entry()
    finally:
        sys.argv = argv
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(usage)


def test_the_gateway_subcommand_names_its_parent_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from producers.__main__ import main

    with pytest.raises(SystemExit):
        main(["gateway", "--help"], prog="producers")
    assert capsys.readouterr().out.startswith("usage: producers gateway [-h]")
    with pytest.raises(SystemExit):
        main(["gateway", "--help"])
    assert capsys.readouterr().out.startswith("usage: python -m producers gateway [-h]")

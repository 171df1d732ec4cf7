"""The layout's rules, read from the source: which package may import what, where SQL
lives, and that the README's code layout names exactly the modules there are."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "producers", "tools")


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports in functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


ALL = list(modules())


@pytest.mark.parametrize(("rel", "path"), [m for m in ALL if m[0].startswith("pipeline/core/")])
def test_the_core_is_pure(rel: str, path: Path) -> None:
    # Standard library, orjson and the core itself: no faust, aiokafka, asyncpg.
    allowed = ("pipeline.core", "pipeline.errors", "orjson")
    bad = {
        name
        for name in imports(path)
        if top(name) not in sys.stdlib_module_names
        and not _under(name, allowed)
        and name != "__future__"
    }
    assert not bad, f"{rel} imports {sorted(bad)}"


@pytest.mark.parametrize(("rel", "path"), ALL)
def test_only_the_worker_imports_faust(rel: str, path: Path) -> None:
    if rel.startswith("pipeline/worker/"):
        return
    assert not {n for n in imports(path) if top(n) in ("faust", "mode")}, rel


@pytest.mark.parametrize(("rel", "path"), ALL)
def test_packages_stack_in_one_direction(rel: str, path: Path) -> None:
    names = imports(path)
    if rel.startswith("pipeline/"):
        assert not {n for n in names if top(n) in ("producers", "tools", "tests")}, rel
        if rel.startswith(("pipeline/core/", "pipeline/sink/")):
            inner = ("pipeline.worker", "pipeline.ops")
            assert not {n for n in names if _under(n, inner)}, rel
    if rel.startswith("producers/"):
        # Producers publish: they use the settings and the pure core, never the worker. The
        # gateway's channel reads are pipeline query's statements (pipeline.sink.sql, text only).
        allowed = (
            "pipeline.console",
            "pipeline.core",
            "pipeline.env",
            "pipeline.errors",
            "pipeline.logs",
            "pipeline.resources",
            "pipeline.settings",
            "pipeline.sink.sql",
        )
        bad = {
            n
            for n in names
            if top(n) == "pipeline" and not _under(n, allowed) and n != "pipeline.sink"
        }
        assert not bad and not {n for n in names if top(n) in ("tools", "tests")}, (rel, bad)


def test_the_statements_module_is_text_only() -> None:
    # The gateway imports it: it must pull in no driver, no worker, nothing but strings.
    for module in ("sql.py", "__init__.py"):  # importing it runs the package's __init__ too
        names = imports(ROOT / "pipeline" / "sink" / module)
        assert {top(n) for n in names} <= {"__future__"}, (module, names)


SQL = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE|ALTER|TRUNCATE)\b")
SQL_HOMES = ("pipeline/sink/sql.py", "producers/gateway/queries.py")


@pytest.mark.parametrize(("rel", "path"), [m for m in ALL if m[0] not in SQL_HOMES])
def test_sql_lives_in_its_two_homes(rel: str, path: Path) -> None:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    statements = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and SQL.match(node.value)
    ]
    assert not statements, f"{rel} holds SQL: {statements[:3]}"


def _readme_tree() -> set[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Code layout", 1)[1].split("```\n", 2)[1]
    named: set[str] = set()
    folders: list[tuple[int, str]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        first = line.split()[0]
        while folders and folders[-1][0] >= indent:
            folders.pop()
        if first.endswith("/") and not first.startswith("0"):
            folders.append((indent, first))
            words = line.split()[1:]
        else:
            words = line.split()
        here = "".join(f for _, f in folders)
        for word in words:
            if re.fullmatch(r"[\w/]+\.(py|xml)", word):
                named.add(here + word)
            elif not re.fullmatch(r"[\w./+]+", word) or word in ("+",):
                break  # a description starts: the rest of the line is prose
    return named


def test_the_readme_code_layout_names_every_module() -> None:
    real = {rel for rel, _ in ALL if not rel.endswith("/__init__.py")}
    real |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "pipeline").rglob("*.xml")}
    named = {n for n in _readme_tree() if n.startswith(PACKAGES)}
    assert sorted(real - named) == [], "modules the README's code layout leaves out"
    assert sorted(named - real) == [], "files the README's code layout names but the tree lacks"

"""requirements.lock: exact versions of everything installed, used by every install."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(r) for r in names]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _locked()
    for req in _declared():
        if req.marker is not None and not req.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None, f"{req.name} is missing from requirements.lock (make lock)"
        assert req.specifier.contains(pinned, prereleases=True), (req, pinned)


def test_the_floors_sit_above_known_defects() -> None:
    orjson = next(r for r in _declared() if r.name == "orjson")
    assert not orjson.specifier.contains("3.9.14") and orjson.specifier.contains("3.9.15")
    assert Version(_locked()["orjson"]) >= Version("3.9.15")


def test_this_environment_is_the_locked_one() -> None:
    """What the suite runs on is what the lock says (make setup installs it)."""
    drift = {
        name: (version, metadata.version(name))
        for name, version in _locked().items()
        if metadata.version(name) != version
    }
    assert not drift, f"installed versions differ from requirements.lock: {drift}"


def test_every_install_uses_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-c requirements\.lock -e '\.\[dev\]'", makefile)
    # The build backend too: the editable install's build and the Docker build stage.
    assert re.search(r"pip install .*--build-constraint requirements\.lock ", makefile)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"pip install .*-c requirements\.lock setuptools", dockerfile)
    assert re.search(r"pip install .*-c \S*requirements\.lock \S+\.whl", dockerfile)


def test_make_lock_keeps_the_build_backend() -> None:
    # pip freeze leaves setuptools out unless told --all; the lock pins it (a dev dependency).
    lock_recipe = (ROOT / "Makefile").read_text().split("\nlock:", 1)[1].split("\n\n", 1)[0]
    assert "pip freeze --all " in lock_recipe and "--exclude pip" in lock_recipe
    assert "setuptools" in _locked()

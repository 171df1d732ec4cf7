"""The product as a user installs it: an sdist, a wheel built from it, the console scripts.

The module builds the sdist from a copy of the working tree (so the tree gets no
``build/`` or ``*.egg-info``), the wheel from that sdist (proving the sdist is
complete), both with the lock's setuptools and no network, and installs the
wheel into a fresh virtual environment outside the repository. That environment
reaches the suite's dependencies through a plain path line (a ``.pth`` holding
the suite's site-packages), so the ``.pth`` files there are not run: the editable
install's import hook, which would serve this repository, is not installed. Every
command runs from a working directory outside the repository, with no
PYTHONPATH; the tests check that the code, the migrations and the schemas come
from the installation.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson
import pytest

from pipeline.ops.procs import free_port
from tests.conftest import REPO, http_get, wait_for

pytestmark = pytest.mark.integration

SCRIPTS = {"pipeline", "producers", "pipeline-gateway"}
NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".lock-venv",
    ".stack",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    workdir: Path  # outside the repository: every command runs here

    def script(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        return {**env, **extra}

    def run(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=self.workdir,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _check(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def _build(cwd: Path, *argv: str) -> str:
    return _check(
        subprocess.run(
            [sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=300
        )
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    assert not root.is_relative_to(REPO)
    source, dist = root / "source", root / "dist"
    shutil.copytree(REPO, source, ignore=NOT_COPIED)

    # sdist, then the wheel from the unpacked sdist (as `python -m build` does).
    hook = f"import setuptools.build_meta as b; print(b.build_sdist({str(dist)!r}))"
    sdist = dist / _build(source, "-c", hook).splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(root / "unpacked", filter="data")
    (unpacked,) = (root / "unpacked").iterdir()
    _build(
        root,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--wheel-dir",
        str(dist),
        str(unpacked),
    )
    (wheel,) = dist.glob("event_pipeline-*.whl")

    venv = root / "venv"
    _build(root, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    purelib = _check(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=False,
        )
    ).strip()
    site_packages = Path(purelib)
    # The dependencies, as a path: the suite's .pth files (the editable hook) do not run.
    (site_packages / "suite-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _build(
        root, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)
    )
    workdir = root / "elsewhere"
    workdir.mkdir()
    return Installed(wheel=wheel, venv=venv, site_packages=site_packages, workdir=workdir)


def test_the_wheel_holds_every_module_and_the_shipped_files(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    modules = {
        p.relative_to(REPO).as_posix()
        for top in ("pipeline", "producers")
        for p in (REPO / top).rglob("*.py")
    }
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
    data = {n for n in names if not n.endswith(".py") and ".dist-info/" not in n}
    expected = {f"pipeline/migrations/{p.name}" for p in (REPO / "migrations").glob("*.sql")}
    expected |= {f"pipeline/schemas/{p.name}" for p in (REPO / "schemas").glob("*.json")}
    expected |= {"pipeline/ops/kafka/pom.xml", "producers/gateway/live.html"}
    assert data == expected
    # Each byte for byte the repository's one copy (package-dir maps the top-level folders).
    with zipfile.ZipFile(installed.wheel) as wheel:
        for name in sorted(expected):
            mapped = name.startswith(("pipeline/migrations/", "pipeline/schemas/"))
            source = name.removeprefix("pipeline/") if mapped else name
            assert wheel.read(name) == (REPO / source).read_bytes(), name
    assert not {n for n in names if n.startswith(("tests/", "tools/", "migrations/", "schemas/"))}


def test_the_installation_imports_its_own_copy_not_the_repository(installed: Installed) -> None:
    probe = (
        "import json, os, sys, pipeline, producers, producers.gateway.openapi\n"
        "from pipeline.resources import migrations_folder, schemas_folder\n"
        "print(json.dumps({'files': [pipeline.__file__, producers.__file__,"
        " producers.gateway.openapi.__file__],"
        " 'data': [str(next(migrations_folder().iterdir())),"
        " str(next(schemas_folder().iterdir()))],"
        " 'finders': [repr(f) for f in sys.meta_path],"
        " 'homes': [p for p in sys.path if os.path.isdir(os.path.join(p or '.', 'pipeline'))]}))"
    )
    seen = json.loads(_check(installed.run(installed.script("python"), "-c", probe)))
    for path in seen["files"] + seen["data"]:
        assert Path(path).is_relative_to(installed.site_packages), path
    # Only the installation holds a `pipeline` package; no import hook serves the repository.
    assert [Path(p) for p in seen["homes"]] == [installed.site_packages], seen["homes"]
    assert not any("editable" in f for f in seen["finders"]), seen["finders"]


def test_the_metadata_declares_the_console_scripts(installed: Installed) -> None:
    shown = _check(
        installed.run(
            sys.executable,
            "-m",
            "pip",
            "--python",
            installed.script("python"),
            "show",
            "--verbose",
            "event-pipeline",
        )
    )
    assert f"Location: {installed.site_packages}" in shown
    entry_points = shown.split("Entry-points:", 1)[1]
    for name, target in (
        ("pipeline", "pipeline.__main__:script"),
        ("producers", "producers.__main__:script"),
        ("pipeline-gateway", "producers.gateway.__main__:script"),
    ):
        assert f"{name} = {target}" in entry_points, entry_points
        assert (installed.venv / "bin" / name).is_file()
    usage = _check(installed.run(installed.script("pipeline"), "--help"))
    assert usage.startswith("usage: pipeline [-h]")


async def test_pipeline_migrate_applies_every_shipped_migration(
    installed: Installed, admin_dsn: str
) -> None:
    name = f"pipeline_install_{os.getpid()}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    try:
        migrate = installed.script("pipeline"), "migrate"
        first = await asyncio.to_thread(installed.run, *migrate, DATABASE_URL=dsn)
        expected = sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
        assert _check(first).strip() == "applied: " + ", ".join(expected)
        again = await asyncio.to_thread(installed.run, *migrate, DATABASE_URL=dsn)
        assert _check(again).strip() == "database is up to date"
        conn = await asyncpg.connect(dsn)
        try:
            recorded = [r["version"] for r in await conn.fetch("TABLE schema_migrations")]
        finally:
            await conn.close()
        assert sorted(recorded) == expected
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_the_gateway_script_serves_the_openapi_document(
    installed: Installed, database: str, tansu_broker: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    env = installed.env(
        DATABASE_URL=database,
        KAFKA_BOOTSTRAP_SERVERS=tansu_broker,
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(port),
        GATEWAY_REQUIRE_API_KEYS="false",
        API_KEYS="",
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [installed.script("pipeline-gateway")],
            cwd=installed.workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def served() -> bytes | None:
            assert proc.poll() is None, log.read_text(errors="replace")
            status, body = await http_get(port, "/openapi.json")
            return body if status == 200 else None

        doc = orjson.loads(await wait_for(served, 60, "the installed gateway's /openapi.json"))
        status, page = await http_get(port, "/live")  # the live page ships as package data
        assert status == 200 and b"<html" in page.lower(), page[:200]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
    # uvicorn re-raises the SIGTERM it handled once the shutdown is done: -15 is a clean stop.
    assert proc.wait() in (0, -signal.SIGTERM), log.read_text(errors="replace")
    schemas = doc["components"]["schemas"]
    for name, file in (
        ("ProductEvent", "product-event.v1.schema.json"),
        ("AgentEvent", "agent-event.v0.schema.json"),
    ):
        contract = orjson.loads((REPO / "schemas" / file).read_bytes())
        assert schemas[name]["required"] == contract["required"], name
        assert set(schemas[name]["properties"]) == set(contract["properties"]), name
    assert doc["paths"]["/events"]["post"]["requestBody"]

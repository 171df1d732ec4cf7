"""Offline checks of docker-compose.yml and the Dockerfile (no Docker engine needed).

The Dockerfile builds the wheel in one stage and installs only that wheel in the
image; compose runs the console scripts pyproject.toml declares. Both are read
here, not built (tests/integration/test_install.py runs an installed wheel).

``docker-compose config`` (Debian's docker-compose 1.29) validates the compose file
against the Compose Specification and prints it normalised; the test reads that
output. A missing docker-compose is a failure, not a skip: the file would go
unchecked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline.ops.kafka_jars import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"kafka", "postgres", "migrate", "worker", "gateway", "loadgen"}
INSTALL_HINT = (
    "docker-compose is not installed, so docker-compose.yml cannot be validated. "
    "Install it (Debian package, v1.29, needs no Docker engine) with: "
    "apt-get update && apt-get install -y docker-compose"
)

Path_ = tuple[str, ...]


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    # COMPOSE_* variables of the caller's shell must not change what is validated.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        [exe, "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _outline(text: str) -> dict[Path_, str | None]:
    """Index the mapping keys of block-style YAML by path.

    ``{("services", "worker", "healthcheck"): None, ("services", "worker",
    "restart"): "unless-stopped", ...}``: a key holding a block maps to None, a
    key holding a scalar maps to the unquoted scalar. Sequences are not entered
    (their items belong to the key above them). Enough for the normalised
    output of ``docker-compose config``; PyYAML is not a project dependency.
    """
    index: dict[Path_, str | None] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    seq_indent: int | None = None  # inside a sequence whose "- " items sit here
    key_re = re.compile(r"""^([A-Za-z0-9_.\-]+|'[^']*'|"[^"]*"):(?: +(.*))?$""")
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        is_item = stripped == "-" or stripped.startswith("- ")
        if seq_indent is not None:
            if indent > seq_indent or (indent == seq_indent and is_item):
                continue
            seq_indent = None
        if is_item:
            seq_indent = indent
            continue
        match = key_re.match(stripped)
        if match is None:
            continue  # continuation line of a wrapped scalar
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = match.group(1).strip("'\"")
        value = match.group(2)
        path = (*tuple(k for _, k in stack), key)
        if value is None or value == "":
            index[path] = None
            stack.append((indent, key))
        else:
            index[path] = value.strip().strip("'\"")
    return index


@pytest.fixture(scope="module")
def config() -> dict[Path_, str | None]:
    result = _compose("config")
    assert result.returncode == 0, (
        f"docker-compose config failed (exit {result.returncode}):\n{result.stderr}"
    )
    unset = [ln for ln in result.stderr.splitlines() if "variable is not set" in ln]
    assert not unset, "every ${VAR} in docker-compose.yml needs a default:\n" + "\n".join(unset)
    return _outline(result.stdout)


def svc(name: str, *rest: str) -> Path_:
    return ("services", name, *rest)


def _services(config: dict[Path_, str | None]) -> set[str]:
    return {p[1] for p in config if len(p) == 2 and p[0] == "services"}


def test_compose_file_validates_and_defines_the_stack(
    config: dict[Path_, str | None],
) -> None:
    # The outline agrees with docker-compose's own list of services.
    listed = _compose("config", "--services")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == _services(config)
    assert _services(config) >= SERVICES, f"missing services: {SERVICES - _services(config)}"

    volumes = _compose("config", "--volumes")
    assert volumes.returncode == 0, volumes.stderr
    assert {"kafka-data", "postgres-data"} <= set(volumes.stdout.split())

    # The worker scales: no fixed container name, no host port.
    assert svc("worker", "container_name") not in config
    assert svc("worker", "ports") not in config
    for name in ("worker", "postgres", "kafka", "gateway"):
        assert svc(name, "healthcheck", "test") in config, f"{name} has no healthcheck"

    for var in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        assert config.get(svc("worker", "environment", var)), f"worker lacks {var}"
    assert config[svc("worker", "environment", "KAFKA_BOOTSTRAP_SERVERS")] == "kafka:9092"
    assert config[svc("worker", "environment", "WORKER_WEB_HOST")] == "0.0.0.0"

    # Start order: databases healthy -> one-shot migrate -> workers.
    assert config.get(svc("migrate", "restart")) == "no"
    for dep in ("postgres", "kafka"):
        assert config.get(svc("migrate", "depends_on", dep, "condition")) == "service_healthy"
    assert (
        config.get(svc("worker", "depends_on", "migrate", "condition"))
        == "service_completed_successfully"
    )
    assert config.get(svc("gateway", "depends_on", "kafka", "condition")) == "service_healthy"
    assert svc("gateway", "ports") in config

    # Safe defaults: the gateway needs keys unless told otherwise, and only the host's
    # loopback reaches it.
    assert config[svc("gateway", "environment", "GATEWAY_REQUIRE_API_KEYS")] == "true"
    assert config[svc("gateway", "environment", "GATEWAY_HOST")] == "0.0.0.0"
    full = yaml.safe_load(_compose("config").stdout)
    published = full["services"]["gateway"]["ports"]
    assert published, "the gateway publishes no port"
    for port in published:  # short ("127.0.0.1:8080:8080") or long syntax
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", published

    # Production runs the Apache Kafka version the suite tests (KRaft, official image).
    assert config[svc("kafka", "image")] == f"apache/kafka:{KAFKA_VERSION}"
    assert config[svc("kafka", "environment", "KAFKA_PROCESS_ROLES")] == "broker,controller"

    # The load generator runs only on request.
    assert svc("loadgen", "profiles") in config
    profiles = _compose("config", "--profiles")
    assert profiles.returncode == 0, profiles.stderr
    assert "load" in profiles.stdout.split()


def _console_scripts() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def _programs(command: list[str] | str) -> list[list[str]]:
    """The commands a service's ``command`` runs, as argument lists (``sh -c`` opened up)."""
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if words[:2] != ["sh", "-c"]:
        return [words]
    runs = []
    for part in re.split(r"&&|\|\||;", words[2]):
        argv = shlex.split(part)
        runs.append(argv[1:] if argv[:1] == ["exec"] else argv)
    return runs


def test_compose_runs_the_console_scripts_pyproject_declares() -> None:
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    scripts = _console_scripts()
    runs = {name: _programs(svc["command"]) for name, svc in services.items() if "command" in svc}
    for name, commands in runs.items():
        for argv in commands:
            assert argv[0] in scripts, f"{name} runs {argv[0]!r}, not one of {sorted(scripts)}"
    assert runs["migrate"] == [["pipeline", "migrate"], ["pipeline", "topics"]]
    assert runs["worker"] == [["pipeline", "worker"]]
    assert runs["gateway"] == [["pipeline-gateway"]]
    assert [argv[:2] for argv in runs["loadgen"]] == [["producers", "generate"]]


def _stages(text: str) -> list[list[str]]:
    """The Dockerfile's instructions by stage: continuation lines joined, comments dropped."""
    stages: list[list[str]] = []
    for ln in re.sub(r"\\\n", " ", text).splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        if re.match(r"FROM\s", ln, re.IGNORECASE):
            stages.append([])
        assert stages, f"an instruction before the first FROM: {ln}"
        stages[-1].append(ln)
    return stages


def _instruction(line: str) -> tuple[str, str]:
    word, _, rest = line.partition(" ")
    return word.upper(), rest.strip()


def test_dockerfile_builds_a_wheel_and_installs_only_that() -> None:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    stages = _stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, "a build stage and the final image"
    for stage in stages:
        assert re.match(r"FROM\s+python:3\.11-slim\b", stage[0], re.IGNORECASE), stage[0]
    build, final = stages[0], stages[-1]
    builder = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", build[0], re.IGNORECASE)
    assert builder, "the build stage needs a name (FROM ... AS build)"
    build_runs = [rest for word, rest in map(_instruction, build) if word == "RUN"]
    assert any("pip wheel" in run and "--no-deps" in run for run in build_runs), build_runs
    # The build backend comes from the lock, like everything else.
    assert any("-c requirements.lock" in run and "setuptools" in run for run in build_runs)

    instructions = [_instruction(line) for line in final]
    runs = [rest for word, rest in instructions if word == "RUN"]
    # The final image installs the built wheel at the lock's versions ...
    assert any(
        re.search(r"pip install .*-c \S*requirements\.lock \S+\.whl", run) for run in runs
    ), runs
    # ... and copies nothing of the source: the wheel from the build stage, and the lock.
    for word, rest in instructions:
        assert word != "ADD", f"ADD {rest}"
        if word == "COPY":
            from_build = rest.startswith(f"--from={builder.group(1)} ")
            assert from_build or rest.split()[0] == "requirements.lock", f"COPY {rest}"

    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"

    commands = [rest for word, rest in instructions if word in ("CMD", "ENTRYPOINT")]
    assert commands, "the Dockerfile has no CMD or ENTRYPOINT"
    for command in commands:
        words = json.loads(command) if command.startswith("[") else command.split()
        assert words[0] in _console_scripts(), f"{words} does not start with a console script"
    assert json.loads(commands[-1]) == ["pipeline", "worker"]

    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored, ".dockerignore must keep .venv and .git out"

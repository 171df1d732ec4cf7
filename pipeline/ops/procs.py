"""Server processes of the local stack: ports, liveness, detached starts and stops."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipeline.errors import StackError

__all__ = [
    "HOST",
    "ServerProc",
    "alive",
    "free_port",
    "free_ports",
    "keep_detached",
    "port_open",
    "spawn_detached",
    "stop_pid",
    "tail",
    "tail_text",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"

# Servers started by this process: holding the Popen keeps Python from warning that a
# subprocess is "still running" when the object is collected (we detach it on purpose).
DETACHED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ServerProc:
    """A server process of the stack, and whether this call started it (so can undo it)."""

    pid: int
    port: int
    started_now: bool
    stop_signal: signal.Signals
    controller_port: int | None = None  # Apache Kafka's KRaft controller


def spawn_detached(
    cmd: Sequence[str], log_file: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session (Ctrl-C in the shell that started it does not reach
    it), appending its output to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )


def keep_detached(proc: subprocess.Popen[bytes]) -> None:
    """Hold ``proc`` until :func:`stop_pid` reaps it."""
    DETACHED[proc.pid] = proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def alive(pid: int, marker: str = "") -> bool:
    """True if ``pid`` runs (not a zombie) and its command line contains ``marker``.

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
    popen = DETACHED.pop(pid, None)
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        return
    if not wait_exited(proc, timeout):
        log.warning("pid %d did not exit %.0f s after %s; killing it", pid, timeout, sig.name)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
        if not wait_exited(proc, timeout):
            raise StackError(f"pid {pid} did not exit even after SIGKILL")
    if popen is not None:
        popen.wait(timeout)  # reaps it and tells the Popen object it is done


def wait_exited(proc: psutil.Process, timeout: float) -> bool:
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


def tail_text(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return tail_text(text, lines) or f"({path} is empty)"

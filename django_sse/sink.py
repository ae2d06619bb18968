"""The client's end of one stream: every byte of a stream leaves through its ``Sink``.

``DirectWriteMiddleware`` (``asgi.py``) gives each HTTP request a sink wrapping the server's
``send`` and ``receive``; Django's response loop, the middleware's own loop and the hub's direct
writes all send through it. That makes it the one place where a stream's bounds hold:

- **No more than the server should hold.** On servers that say when a client is not keeping up
  (``servers.py``), a chunk waits until the server takes data again; a server we do not know
  gets no such wait, and the stream bounds its bytes per connection instead.
- **No wait without end.** A send may wait at most ``SEND_TIMEOUT_SECONDS``; then the
  connection is dropped (the browser resumes from its last id: the database is the record).
- **No chunk after a revocation.** While a send waits, the stream's authorization deadline
  (``ending.Guard``) still falls due: the session is checked again, and a revoked stream drops
  its connection instead of waiting on.
- **Dead peers.** The socket gets ``TCP_USER_TIMEOUT`` = ``HEARTBEAT_SECONDS``, so the kernel
  drops a client that stopped acknowledging (a closed laptop) within about two heartbeats.

A sink also checks that the stream's chunks reach the server unchanged (no Django middleware
rewrites them), which is what lets the hub write live events straight to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from django.db import DatabaseError

from django_sse.conf import conf
from django_sse.ending import CloseReason, StreamClosed
from django_sse.servers import Connection, connection_of

if TYPE_CHECKING:
    from django_sse.ending import Guard

logger = logging.getLogger("django_sse")

Message = Mapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


def body_message(chunk: bytes) -> Message:
    """The ASGI message of one body chunk of a stream."""
    return {"type": "http.response.body", "body": chunk, "more_body": True}


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


def start_send(awaitable: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run a server's ``send`` up to its first suspension: usually it never suspends (the bytes
    went to the socket's buffer) and that is the whole write, with no task made for it. If it
    does suspend (back-pressure), it finishes in a task, returned. Errors raised before the
    first suspension are raised here."""
    if not asyncio.iscoroutine(awaitable):
        # Not a coroutine (a server's native awaitable, a future): awaited in a task.
        return asyncio.ensure_future(awaitable)
    try:
        waiting = awaitable.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_Resume(awaitable, waiting))


class Sink:
    """The server's ``send`` and ``receive`` for one HTTP request, the bounds of the stream it
    serves (once one ``attach``-es), and the stream body the middleware took over, if any."""

    __slots__ = (
        "aborted",
        "connection",
        "detached",
        "disconnected",
        "ended",
        "expected",
        "guard",
        "raw",
        "raw_receive",
        "verified",
    )

    # A body-rewriting middleware is logged once per process, not once per stream.
    rewrite_logged: ClassVar[bool] = False

    def __init__(self, raw: Send, raw_receive: Receive) -> None:
        self.raw = raw
        self.raw_receive = raw_receive
        self.expected: bytes | None = None
        self.verified = False
        self.detached: AsyncGenerator[bytes, None] | None = None
        self.disconnected = False
        self.connection: Connection | None = None
        self.guard: Guard | None = None
        # Why the sink ended the stream (the stream reads it after each chunk), if it did.
        self.ended: CloseReason | None = None
        self.aborted = False

    # -- the stream's side ---------------------------------------------------------------------

    def attach(self, guard: Guard) -> Connection | None:
        """A stream starts on this request: find the server's connection and bound it."""
        self.guard = guard
        self.connection = connection = connection_of(self.raw)
        if connection is not None:
            connection.set_user_timeout(conf.HEARTBEAT_SECONDS)
        return connection

    def release(self) -> None:
        """The stream is over (its last chunk may still be sent)."""
        self.guard = None
        if self.connection is not None:
            self.connection.release()

    @property
    def backpressure(self) -> bool:
        """Whether the stream learns here when its client does not keep up."""
        return self.connection is not None and self.connection.backpressure

    @property
    def writable(self) -> bool:
        """Whether a chunk may be handed to the server right now, without waiting."""
        return self.ended is None and (self.connection is None or not self.connection.paused)

    def expect(self, chunk: bytes) -> None:
        """``chunk`` is about to be yielded to Django: check that it is sent as it is."""
        self.expected = chunk
        self.verified = False

    def end(self, reason: CloseReason) -> None:
        """Give up on the client: drop the connection (with what the server buffers for it)."""
        if self.ended is None:
            self.ended = reason
        if self.connection is not None and not self.aborted:
            self.aborted = True
            self.connection.abort()

    # -- the server's side ---------------------------------------------------------------------

    async def receive(self) -> Message:
        message = await self.raw_receive()
        if message.get("type") == "http.disconnect":
            # Seen here even if Django's handler is the one that reads it.
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        """What Django (and ASGI middleware around it) sends through."""
        if self.ended is not None:
            # The stream gave up on its client: nothing more reaches the server (a connection
            # that could not be dropped would take no more than the last send did).
            return
        body = message.get("type") == "http.response.body"
        if self.detached is not None:
            # Django ends its response after the body left its loop: the stream goes on. A
            # chunk a middleware still held goes out now, before the middleware or the hub
            # writes anything more (Django is done before either starts).
            if body and message.get("body"):
                await self._send_quietly({**message, "more_body": True})
            return
        expected = self.expected
        if expected is not None and body:
            self.expected = None
            self.verified = message.get("body") == expected
            if not self.verified and not Sink.rewrite_logged:
                Sink.rewrite_logged = True
                logger.warning(
                    "A middleware rewrites the body of event streams: live events go through "
                    "Django's response loop instead of DirectWriteMiddleware's direct writes."
                )
        if body and message.get("body") and self.guard is not None:
            await self._send_quietly(message)
        else:
            await self.raw(message)

    async def _send_quietly(self, message: Message) -> None:
        # Django's response loop must not see our ending as an error: the stream reads
        # ``ended`` after its chunk and stops.
        with contextlib.suppress(StreamClosed):
            await self.deliver(message)

    async def deliver(self, message: Message) -> None:
        """Send a body chunk within the stream's bounds; raises ``StreamClosed`` (the
        connection dropped) when the client does not take it in time or the session is
        revoked meanwhile.

        The server's ``send`` is awaited in the caller's own task, as a plain ``await``: an
        ASGI middleware around ours may tie its ``send`` to the task's context."""
        if self.ended is not None:
            raise StreamClosed(self.ended)
        async with _Watchdog(self):
            connection = self.connection
            if connection is not None:
                writable = connection.writable()
                if writable is not None:
                    await writable
            await self.raw(message)

    async def wait(self, pending: asyncio.Future[None]) -> None:
        """Wait for a send under way (or for the server to take data again), within the
        stream's bounds (as ``deliver``)."""
        if self.ended is not None:
            raise StreamClosed(self.ended)
        try:
            async with _Watchdog(self):
                await asyncio.shield(pending)
        finally:
            if not pending.done():
                pending.cancel()


class _Watchdog:
    """Bounds one wait of a stream's task on its client: at ``SEND_TIMEOUT_SECONDS`` it gives
    up, and at the authorization deadline it has the session checked again meanwhile (a
    revoked session gives up too). Giving up drops the connection, which ends the wait (the
    server's ``send`` returns, Daphne's producer is stopped); where nothing can be dropped (a
    server we do not know) the waiting task is cancelled instead. Either way the wait raises
    ``StreamClosed``."""

    __slots__ = ("cancelled", "check", "give_up", "handle", "loop", "sink", "task")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.loop = asyncio.get_running_loop()
        self.give_up = self.loop.time() + conf.SEND_TIMEOUT_SECONDS
        self.task = asyncio.current_task()
        self.handle: asyncio.TimerHandle | None = None
        self.check: asyncio.Task[None] | None = None
        self.cancelled = False

    async def __aenter__(self) -> _Watchdog:
        self._arm()
        return self

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if self.handle is not None:
            self.handle.cancel()
        if self.check is not None and not self.check.done():
            self.check.cancel()
        ended = self.sink.ended
        if self.cancelled and isinstance(exc, asyncio.CancelledError):
            # Our own cancellation, not the client leaving: take it back.
            uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
        if ended is not None and (exc is None or self.cancelled):
            raise StreamClosed(ended)
        return False

    def _arm(self) -> None:
        guard = self.sink.guard
        until = self.give_up if guard is None else min(self.give_up, guard.until)
        self.handle = self.loop.call_at(until, self._due)

    def _due(self) -> None:
        self.handle = None
        now = self.loop.time()
        if now >= self.give_up:
            self._stop(CloseReason.SEND_TIMEOUT)
            return
        guard = self.sink.guard
        if guard is not None and now >= guard.until:
            self.check = self.loop.create_task(self._recheck(guard))
            return
        self._arm()

    async def _recheck(self, guard: Guard) -> None:
        try:
            await guard.recheck()
        except StreamClosed as exc:
            self._stop(exc.reason)
            return
        except DatabaseError:
            self._stop(CloseReason.DATABASE_ERROR)
            return
        except Exception:
            logger.exception("Checking the session of a stream failed.")
            self._stop(CloseReason.ERROR)
            return
        self._arm()

    def _stop(self, reason: CloseReason) -> None:
        self.sink.end(reason)
        if not self.sink.aborted and self.task is not None:
            self.cancelled = True
            self.task.cancel()

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
  its connection instead of waiting on (``watchdog.py`` bounds each wait).
- **Dead peers.** The socket gets ``TCP_USER_TIMEOUT`` = ``HEARTBEAT_SECONDS``, so the kernel
  drops a client that stopped acknowledging (a closed laptop) within about two heartbeats.

A sink also checks that the stream's chunks reach the server unchanged (no Django middleware
rewrites them), which is what lets the hub write live events straight to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from django.http import HttpRequest

from django_sse.conf import conf
from django_sse.ending import CloseReason, StreamClosed
from django_sse.servers import Connection, connection_of
from django_sse.watchdog import SendWatchdog

if TYPE_CHECKING:
    from django_sse.ending import Guard

logger = logging.getLogger("django_sse")

Message = Mapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


# The scope key under which the middleware hands a request's sink to the views.
SINK_SCOPE_KEY = "django_sse.sink"
# How long an application that dropped its connection waits for the server to notice.
ABORT_GRACE_SECONDS = 1.0


def request_sink(request: HttpRequest) -> Sink | None:
    """The sink of a request served through ``DirectWriteMiddleware``, if it was."""
    scope = getattr(request, "scope", None)
    sink = scope.get(SINK_SCOPE_KEY) if isinstance(scope, dict) else None
    return sink if isinstance(sink, Sink) else None


def body_message(chunk: bytes) -> Message:
    """The ASGI message of one body chunk of a stream."""
    return {"type": "http.response.body", "body": chunk, "more_body": True}


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
            # From here on every chunk reaches the server through ``raw``: the server's
            # cheapest way to send one (the same bytes on the wire), found once.
            self.raw = connection.body_send(self.raw)
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

    async def until_disconnected(self) -> None:
        """After an abort, let the server see its connection gone before the application
        returns: a server that finds the application done first logs an unfinished response as
        an error (uvicorn: asyncio calls ``connection_lost()`` a turn of the loop after an
        abort)."""
        with contextlib.suppress(Exception):  # a timeout, or a failing receive: nobody to tell
            await asyncio.wait_for(self._receive_until_disconnect(), ABORT_GRACE_SECONDS)

    async def _receive_until_disconnect(self) -> None:
        while not self.disconnected:
            await self.receive()

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
        async with SendWatchdog(self):
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
            async with SendWatchdog(self):
                await asyncio.shield(pending)
        finally:
            if not pending.done():
                pending.cancel()

"""ASGI middleware that lets job streams write live events straight to the server.

Without it every live event of every stream goes through Django's response loop: the stream's
task wakes up, yields the chunk, and Django's ``send_response()`` sends it. That costs more than
the write itself when one event goes to a thousand streams. With it, the hub writes an event to
every caught-up stream of its job in one pass, with the server's own ``send``::

    # asgi.py
    from django.core.asgi import get_asgi_application
    from django_sse.asgi import DirectWriteMiddleware

    application = DirectWriteMiddleware(get_asgi_application())

The response headers, the ``retry:`` line and the replay go through Django. Once caught up, a
stream's body ends for Django (``Body``), which finishes the request and frees what it held for
it while the connection stays open; this middleware then sends the rest of the stream
(heartbeats, gaps read from the database, the end) and stops it when the client leaves.

A stream does this only once it has seen its first chunk reach the middleware's ``send``
unchanged, so a Django middleware that rewrites streaming bodies (compression, say) simply
leaves it on Django's path. Live events are written from the hub's task, not the stream's: an
ASGI middleware *around* this one must not tie its ``send`` to the context of the request's
task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, ClassVar

logger = logging.getLogger("django_sse")

Message = Mapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_current: ContextVar[Sink | None] = ContextVar("django_sse_sink", default=None)


class _Detach(bytes):
    """The type of ``DETACH``."""


# What a stream body yields to leave Django's response loop (never sent; see ``Body``).
DETACH = _Detach()


class Sink:
    """The server's ``send`` and ``receive`` for one HTTP request, whether our chunks reach the
    server unchanged, and the stream body the middleware took over from Django, if any."""

    __slots__ = ("detached", "disconnected", "expected", "raw", "raw_receive", "verified")

    # A body-rewriting middleware is logged once per process, not once per stream.
    rewrite_logged: ClassVar[bool] = False

    def __init__(self, raw: Send, raw_receive: Receive) -> None:
        self.raw = raw
        self.raw_receive = raw_receive
        self.expected: bytes | None = None
        self.verified = False
        self.detached: AsyncIterator[bytes] | None = None
        self.disconnected = False

    async def receive(self) -> Message:
        message = await self.raw_receive()
        if message.get("type") == "http.disconnect":
            # Seen here even if Django's handler is the one that reads it.
            self.disconnected = True
        return message

    def expect(self, chunk: bytes) -> None:
        """``chunk`` is about to be yielded to Django: check that it is sent as it is."""
        self.expected = chunk
        self.verified = False

    async def send(self, message: Message) -> None:
        if self.detached is not None:
            # Django ends its response after the body left its loop: the stream goes on. A
            # chunk a middleware still held goes out now, before the middleware or the hub
            # writes anything more (Django is done before either starts).
            if message.get("type") == "http.response.body" and message.get("body"):
                await self.raw({**message, "more_body": True})
            return
        expected = self.expected
        if expected is not None and message.get("type") == "http.response.body":
            self.expected = None
            self.verified = message.get("body") == expected
            if not self.verified and not Sink.rewrite_logged:
                Sink.rewrite_logged = True
                logger.warning(
                    "A middleware rewrites the body of event streams: live events go through "
                    "Django's response loop instead of DirectWriteMiddleware's direct writes."
                )
        await self.raw(message)


class DirectWriteMiddleware:
    """Wrap a Django ASGI application so that job streams can write live events directly."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        sink = Sink(send, receive)
        token = _current.set(sink)
        try:
            await self.app(scope, sink.receive, sink.send)
        except BaseException:
            if sink.detached is not None:
                await sink.detached.aclose()  # type: ignore[attr-defined]
            raise
        finally:
            _current.reset(token)
        if sink.detached is not None:
            await serve(sink)


class Body:
    """A stream body that can leave Django's response loop.

    Django's handler iterates it as usual until the stream yields ``DETACH`` (once it has
    caught up and its first chunk was seen unchanged): the body then ends for Django, which
    finishes the request and frees what it held for it, and the middleware goes on iterating
    the same stream and sending its chunks itself, until the stream ends or the client leaves.
    """

    __slots__ = ("inner", "sink")

    def __init__(self, inner: AsyncIterator[bytes], sink: Sink) -> None:
        self.inner = inner
        self.sink = sink

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.inner.__anext__()
        if chunk is DETACH:
            self.sink.detached = self.inner
            raise StopAsyncIteration
        return chunk


async def serve(sink: Sink) -> None:
    """Send the rest of a detached stream body; stop it when the client goes away."""
    body = sink.detached
    assert body is not None
    task = asyncio.current_task()
    assert task is not None

    async def watch() -> None:
        try:
            while not sink.disconnected:
                await sink.receive()
        except Exception as exc:  # the server's receive failed: the connection is unusable
            logger.warning("Receiving from the server failed (%r); ending the stream.", exc)
            sink.disconnected = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        async for chunk in body:
            await sink.raw(body_message(chunk))
        await sink.raw({"type": "http.response.body", "body": b"", "more_body": False})
    except Exception as exc:
        # The server (or a middleware around ours) failed to send: nobody to tell.
        logger.warning("Sending a stream failed (%r); ending it.", exc)
    except asyncio.CancelledError:
        if not sink.disconnected:
            raise
        # The client left: the cancellation was ours, the request is over.
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
    finally:
        watcher.cancel()
        await body.aclose()  # type: ignore[attr-defined]


def body_message(chunk: bytes) -> Message:
    """The ASGI message of one body chunk of a stream."""
    return {"type": "http.response.body", "body": chunk, "more_body": True}


def current_sink() -> Sink | None:
    """The sink of the request being handled, if the application is wrapped."""
    return _current.get()


def stream_body(events: Callable[[Sink | None], AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """The body of a stream response: ``events(sink)``, in a ``Body`` behind the middleware.

    ``events`` calls ``sink.expect()`` on its first chunk and yields ``DETACH`` once it has
    caught up, if ``sink.verified``.
    """
    sink = current_sink()
    if sink is None:
        return events(None)
    return Body(events(sink), sink)

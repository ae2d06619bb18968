"""ASGI middleware that puts every stream behind its bounds and lets caught-up streams write
live events straight to the server.

Wrap the project's application with it::

    # asgi.py
    from django.core.asgi import get_asgi_application
    from django_sse.asgi import DirectWriteMiddleware

    application = DirectWriteMiddleware(get_asgi_application())

Each HTTP request gets a ``Sink`` (``sink.py``) around the server's ``send`` and ``receive``,
found by the view in the request's scope. Through it a stream learns when its client does not
keep up, bounds how long a send may wait, drops a connection it gives up on, and has the kernel
drop a client that vanished (see ``sink.py`` and ``servers.py``). Without the middleware the
stream can see none of that and bounds the bytes it sends per connection instead.

Live events: without the middleware every live event of every stream goes through Django's
response loop: the stream's task wakes up, yields the chunk, and Django's ``send_response()``
sends it. With it, the hub writes an event to every caught-up stream of its job in one pass,
with the server's own ``send``. The response headers, the ``retry:`` line and the replay go
through Django. Once caught up, a stream's body ends for Django (``Body``), which finishes the
request and frees what it held for it while the connection stays open; this middleware then
sends the rest of the stream (heartbeats, gaps read from the database, the end) and stops it
when the client leaves.

A stream does this only once it has seen its first chunk reach the middleware's ``send``
unchanged, so a Django middleware that rewrites streaming bodies (compression, say) simply
leaves it on Django's path. Live events are written from the hub's task, not the stream's: an
ASGI middleware *around* this one must not tie its ``send`` to the context of the request's
task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from django.http import HttpRequest

from django_sse.ending import StreamClosed
from django_sse.sink import Message, Receive, Send, Sink, body_message

logger = logging.getLogger("django_sse")

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The scope key under which the middleware hands a request's sink to the views.
SINK_SCOPE_KEY = "django_sse.sink"

__all__ = ["DETACH", "Body", "DirectWriteMiddleware", "Message", "Sink", "request_sink"]


class _Detach(bytes):
    """The type of ``DETACH``."""


# What a stream body yields to leave Django's response loop (never sent; see ``Body``).
DETACH = _Detach()


class DirectWriteMiddleware:
    """Wrap a Django ASGI application: streams get their bounds, and caught-up job streams
    their direct writes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        sink = Sink(send, receive)
        try:
            await self.app({**scope, SINK_SCOPE_KEY: sink}, sink.receive, sink.send)
        except BaseException:
            if sink.detached is not None:
                await sink.detached.aclose()
            raise
        if sink.detached is not None:
            await serve(sink)
        elif sink.aborted and not sink.disconnected:
            await _until_disconnected(sink)


# How long an application that dropped its connection waits for the server to notice.
_ABORT_GRACE_SECONDS = 1.0


async def _until_disconnected(sink: Sink) -> None:
    """After an abort, let the server see its connection gone before the application returns:
    a server that finds the application done first logs an unfinished response as an error
    (uvicorn: asyncio calls ``connection_lost()`` a turn of the loop after an abort)."""
    with contextlib.suppress(Exception):  # a timeout, or a failing receive: nobody to tell
        await asyncio.wait_for(_receive_until_disconnect(sink), _ABORT_GRACE_SECONDS)


async def _receive_until_disconnect(sink: Sink) -> None:
    while not sink.disconnected:
        await sink.receive()


def request_sink(request: HttpRequest) -> Sink | None:
    """The sink of a request served through ``DirectWriteMiddleware``, if it was."""
    scope = getattr(request, "scope", None)
    sink = scope.get(SINK_SCOPE_KEY) if isinstance(scope, dict) else None
    return sink if isinstance(sink, Sink) else None


class Body:
    """A stream's response body: Django iterates it until the stream yields ``DETACH`` (once
    it has caught up and its first chunk was seen unchanged). The body then ends for Django,
    which finishes the request and frees what it held for it, and the middleware goes on
    iterating the same stream and sending its chunks itself, until the stream ends or the
    client leaves.

    Django calls ``close()`` when it is done with the response, also when the stream never
    started (the client left first): ``on_close`` then runs, unless the stream left Django.
    Should Django drop the response without closing it (the client left while the response
    went back through the middleware), ``on_close`` runs when the body is collected.
    """

    __slots__ = ("__weakref__", "inner", "on_close", "sink")

    def __init__(
        self, inner: AsyncGenerator[bytes, None], sink: Sink | None, on_close: Callable[[], None]
    ) -> None:
        self.inner = inner
        self.sink = sink
        self.on_close = on_close
        weakref.finalize(self, _dropped, asyncio.get_running_loop(), sink, on_close)

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.inner.__anext__()
        if chunk is DETACH:
            assert self.sink is not None
            self.sink.detached = self.inner
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        if self.sink is None or self.sink.detached is None:
            self.on_close()


def _dropped(
    loop: asyncio.AbstractEventLoop, sink: Sink | None, on_close: Callable[[], None]
) -> None:
    """A body was collected: unless its stream left Django (it then ends on its own), run
    ``on_close`` on ``loop`` (a finalizer may run in the middle of anything)."""
    if sink is not None and sink.detached is not None:
        return
    try:
        loop.call_soon_threadsafe(on_close)
    except RuntimeError:  # the loop is closed
        on_close()


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
        try:
            async for chunk in body:
                await sink.deliver(body_message(chunk))
        except StreamClosed:
            pass  # the sink dropped the connection; the stream logs why when it closes
        if sink.ended is None:
            await sink.raw({"type": "http.response.body", "body": b"", "more_body": False})
        elif sink.aborted:
            # The watcher sees the server notice the abort, and then cancels this task (see
            # _until_disconnected for why that is waited for).
            await asyncio.wait({watcher}, timeout=_ABORT_GRACE_SECONDS)
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
        await body.aclose()

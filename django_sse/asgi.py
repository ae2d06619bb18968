"""ASGI middleware that puts every stream behind its bounds and lets caught-up streams write
live events straight to the server.

Wrap the project's application with it::

    # asgi.py
    from django.core.asgi import get_asgi_application
    from django_sse.asgi import DirectWriteMiddleware

    application = DirectWriteMiddleware(get_asgi_application())

Each HTTP request gets a ``Sink`` (``sink.py``) around the server's ``send`` and ``receive``,
which the view finds in the request's scope (``sink.request_sink``). Through it a stream learns
when its client does not keep up, bounds how long a send may wait, drops a connection it gives
up on, and has the kernel drop a client that vanished (see ``sink.py`` and ``servers.py``).
Without the middleware the stream can see none of that and bounds the bytes it sends per
connection instead.

Live events: without the middleware every live event of every stream goes through Django's
response loop. With it, the hub writes an event to every caught-up stream of its job in one
pass, with the server's own ``send`` (``direct.py``), and a caught-up stream's body leaves
Django, which then finishes the request, while this middleware sends the rest of the stream
(``detach.py``).

A stream does this only once it has seen its first chunk reach the middleware's ``send``
unchanged, so a Django middleware that rewrites streaming bodies (compression, say) simply
leaves it on Django's path. Live events are written from the hub's task, not the stream's: an
ASGI middleware *around* this one must not tie its ``send`` to the context of the request's
task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from django_sse.detach import serve
from django_sse.sink import SINK_SCOPE_KEY, Receive, Send, Sink

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["DirectWriteMiddleware"]


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
            await sink.until_disconnected()

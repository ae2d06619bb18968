"""ASGI middleware that lets job streams write live events straight to the server.

Without it every live event of every stream goes through Django's response loop: the stream's
task wakes up, yields the chunk, and Django's ``send_response()`` sends it. That costs more than
the write itself when one event goes to a thousand streams. With it, the hub writes an event to
every caught-up stream of its job in one pass, with the server's own ``send``::

    # asgi.py
    from django.core.asgi import get_asgi_application
    from django_sse.asgi import DirectWriteMiddleware

    application = DirectWriteMiddleware(get_asgi_application())

Everything else (the response headers, the replay, heartbeats, gaps read from the database,
the end of the stream) still goes through Django. A stream writes directly only once it has
seen its first chunk reach the server unchanged, so a middleware that rewrites streaming bodies
(compression, say) simply leaves it on Django's path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

logger = logging.getLogger("django_sse")

Message = Mapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_warned = False


def _warn_once() -> None:
    global _warned
    _warned = True


_current: ContextVar[Sink | None] = ContextVar("django_sse_sink", default=None)


class Sink:
    """The server's ``send`` for one HTTP request, and whether our chunks reach it unchanged."""

    __slots__ = ("expected", "raw", "verified")

    def __init__(self, raw: Send) -> None:
        self.raw = raw
        self.expected: bytes | None = None
        self.verified = False

    def expect(self, chunk: bytes) -> None:
        """``chunk`` is about to be yielded to Django: check that it is sent as it is."""
        self.expected = chunk
        self.verified = False

    async def send(self, message: Message) -> None:
        expected = self.expected
        if expected is not None and message.get("type") == "http.response.body":
            self.expected = None
            self.verified = message.get("body") == expected
            if not self.verified and not _warned:
                _warn_once()
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
        sink = Sink(send)
        token = _current.set(sink)
        try:
            await self.app(scope, receive, sink.send)
        finally:
            _current.reset(token)


def current_sink() -> Sink | None:
    """The sink of the request being handled, if the application is wrapped."""
    return _current.get()

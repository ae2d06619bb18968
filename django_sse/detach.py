"""Leaving Django's response loop: a caught-up stream's body ends for Django, and the rest of
the stream is sent from ``DirectWriteMiddleware`` (``asgi.py``).

Without this every live event of every stream goes through Django's response loop: the
stream's task wakes up, yields the chunk, and Django's ``send_response()`` sends it. Once a
stream has caught up and its first chunk was seen to reach the sink unchanged, it yields
``DETACH``: its ``Body`` ends for Django, which finishes the request and frees what it held for
it while the connection stays open, and ``serve()`` goes on iterating the same stream and
sending its chunks through the sink (heartbeats, gaps read from the database, the end) until
the stream ends or the client leaves. Live events meanwhile go straight from the hub to the
server (``direct.py``). The response headers, the ``retry:`` line and the replay always go
through Django.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncGenerator, Callable

from django_sse.ending import StreamClosed
from django_sse.sink import ABORT_GRACE_SECONDS, Sink, body_message

logger = logging.getLogger("django_sse")


class _Detach(bytes):
    """The type of ``DETACH``."""


# What a stream body yields to leave Django's response loop (never sent; see ``Body``).
DETACH = _Detach()


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
            # Sink.until_disconnected for why that is waited for).
            await asyncio.wait({watcher}, timeout=ABORT_GRACE_SECONDS)
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

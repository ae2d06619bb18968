"""Letting go of the request's thread once a stream no longer needs it.

Django's ASGI handler runs each request inside an asgiref ``ThreadSensitiveContext``. The first
sync call of the request (the ``request_started`` receivers, ``SessionMiddleware``) starts that
context's one-thread executor, and the thread lives until the handler returns, which for a
stream is when the client leaves: one idle thread per open stream. Once the middleware has run
and the response has started, nothing else of the request needs that thread, so the stream
closes the thread's database connections (from that thread) and shuts the executor down. If
Django needs a thread-sensitive call later (``response.close()`` at the very end), asgiref
starts a fresh executor for it, which exits with the request.
"""

from __future__ import annotations

import logging

from asgiref.sync import SyncToAsync, sync_to_async

from django_sse.database import close_connections

logger = logging.getLogger("django_sse")


async def release_request_thread() -> bool:
    """Shut down the current request's thread-sensitive executor; True if one was released."""
    context_var = getattr(SyncToAsync, "thread_sensitive_context", None)
    executors = getattr(SyncToAsync, "context_to_thread_executor", None)
    if context_var is None or executors is None:  # pragma: no cover - a future asgiref
        return False
    context = context_var.get(None)
    # A context given its own executor belongs to its caller: leave it alone.
    if context is None or getattr(context, "_executor", None) is not None:
        return False
    executor = executors.get(context)
    if executor is None:
        return False
    await sync_to_async(close_connections, thread_sensitive=True)()
    executors.pop(context, None)
    executor.shutdown(wait=False)
    return True

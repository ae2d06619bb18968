"""Letting go of the request's thread once a stream no longer needs it.

Django's ASGI handler runs each request inside an asgiref ``ThreadSensitiveContext``. The first
sync call of the request (the ``request_started`` receivers, ``SessionMiddleware``) starts that
context's one-thread executor, and the thread lives until the handler returns, which for a
stream is when the client leaves: one idle thread per open stream. Once the middleware has run
and the response has started, nothing else of the request needs that thread, so the stream
closes the thread's database connections (from that thread) and shuts the executor down. If
Django needs a thread-sensitive call later (``response.close()`` at the very end), asgiref
starts a fresh executor for it, which exits with the request.

What it relies on that asgiref does not promise (checked on asgiref 3.13.0): the class
attributes ``SyncToAsync.thread_sensitive_context`` (a ``ContextVar`` holding the request's
context) and ``SyncToAsync.context_to_thread_executor`` (the executor of each context), and a
context's ``_executor`` being set only when its caller gave it one. If either attribute is
missing, the plain route is taken: nothing is released, and each open stream keeps its
request's idle thread (and its database connection) until it ends. ``tests/test_fastpaths.py``
checks both routes.
"""

from __future__ import annotations

from asgiref.sync import SyncToAsync, sync_to_async

from django_sse.database import close_connections


async def release_request_thread() -> bool:
    """Shut down the current request's thread-sensitive executor; True if one was released."""
    context_var = getattr(SyncToAsync, "thread_sensitive_context", None)
    executors = getattr(SyncToAsync, "context_to_thread_executor", None)
    if context_var is None or executors is None:
        return False  # the plain route: the thread stays until the request ends
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

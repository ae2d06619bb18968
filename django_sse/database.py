"""The thread where streams touch the database.

Streams never use the ORM from the request's own thread: under ASGI that thread (and its
database connection) would live as long as the stream. All their queries run here instead, on
one thread per process, so a process holds one database connection for any number of streams.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from django.db import DatabaseError, connections

P = ParamSpec("P")
R = TypeVar("R")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="django_sse-db")


def close_connections() -> None:
    """Close this thread's database connections (outside of any transaction)."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()


def _call(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return func(*args, **kwargs)
    except DatabaseError:
        # The connection may be broken (server restarted, network cut): start afresh next time.
        close_connections()
        raise


async def run_in_db_thread(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``func`` on the stream database thread and return its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(_call, func, *args, **kwargs))


async def aclose_db_thread_connections() -> None:
    await run_in_db_thread(close_connections)


def close_db_thread_connections() -> None:
    """Blocking variant, for code without an event loop (test teardown, shutdown)."""
    _executor.submit(close_connections).result()

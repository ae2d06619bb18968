"""The thread where streams touch the database.

Streams never use the ORM from the request's own thread: under ASGI that thread (and its
database connection) would live as long as the stream. All their queries run here instead, on
one thread per process, so a process holds one database connection for any number of streams.

The thread serves two lanes. Short queries that somebody waits on now (authorizing a stream
that opens, the session checks, the hub's look for new events and its gap fills, the look for
new jobs) go first; the pages of replays go when no short query waits. A visitor replaying a
long history (or twenty of them) thus delays another visitor's stream opening, or a live event
read by the poll, by one page at most, not by every page queued before it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from django.db import DatabaseError, connections, router
from django.db.models import Model

P = ParamSpec("P")
R = TypeVar("R")

THREAD_NAME = "django_sse-db_0"


def primary(model: type[Model]) -> str:
    """The database events are written to. Streams read there too: a lagging replica could
    show event n + 1 without event n."""
    return router.db_for_write(model)


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


class _Work:
    __slots__ = ("call", "future")

    def __init__(self, call: Callable[[], Any], future: Future[Any]) -> None:
        self.call = call
        self.future = future


class DatabaseThread:
    """One daemon thread running calls, urgent ones before bulk ones (each lane in order)."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._urgent: deque[_Work] = deque()
        self._bulk: deque[_Work] = deque()
        self._thread: threading.Thread | None = None

    def submit(self, call: Callable[[], R], *, bulk: bool = False) -> Future[R]:
        future: Future[R] = Future()
        with self._ready:
            (self._bulk if bulk else self._urgent).append(_Work(call, future))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._thread.start()
            self._ready.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._urgent and not self._bulk:
                    self._ready.wait()
                work = self._urgent.popleft() if self._urgent else self._bulk.popleft()
            if not work.future.set_running_or_notify_cancel():
                continue  # its caller gave up while it waited
            try:
                result = work.call()
            except BaseException as exc:
                work.future.set_exception(exc)
            else:
                work.future.set_result(result)


_thread = DatabaseThread()


async def run_in_db_thread(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``func`` on the stream database thread, ahead of replay pages; return its result."""
    future = _thread.submit(functools.partial(_call, func, *args, **kwargs))
    return await asyncio.wrap_future(future)


async def run_bulk_in_db_thread(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``func`` (a page of a replay) on the stream database thread once no urgent call
    waits; return its result."""
    future = _thread.submit(functools.partial(_call, func, *args, **kwargs), bulk=True)
    return await asyncio.wrap_future(future)


async def aclose_db_thread_connections() -> None:
    await run_in_db_thread(close_connections)


def close_db_thread_connections() -> None:
    """Blocking variant, for code without an event loop (test teardown, shutdown)."""
    _thread.submit(close_connections).result()

"""The threads where streams touch the database.

Streams never use the ORM from the request's own thread: under ASGI that thread (and its
database connection) would live as long as the stream. All their queries run on the stream
database threads instead: ``DB_THREADS`` of them per process (by default one on SQLite, four
elsewhere, see ``db_threads()``), so a process holds that many database connections for any
number of streams.

Why several: a query costs little on the database, but each hands Python's GIL back and waits
to get it again while the event loop is busy; one thread spends most of an admission storm
waiting in turn. Several overlap those waits where the database serves concurrent readers.
SQLite serves one writer at a time, and in its default journal mode a reader holding the
database delays a publisher's commit: there one thread stays the default.

The threads serve two lanes. Short queries that somebody waits on now (authorizing a stream
that opens, the session checks, the hub's look for new events and its gap fills, the look for
new jobs) go first; the pages of replays go when no short query waits. A visitor replaying a
long history (or twenty of them) thus delays another visitor's stream opening, or a live event
read by the poll, by one page at most, not by every page queued before it. Each lane starts its
calls in order; with several threads, calls started in order may finish out of order, so
whoever needs one call after another awaits the first (the feed's gap fills and the hub's poll
do: one call at a time each).

Streams opening together (a storm of reconnections) ask the same questions of many rows: a
``Batch`` gathers such calls while no thread has taken them yet and runs them as one call (one
query for all, ``WHERE id IN (...)``). A call alone waits for nothing: its batch is queued at
once and holds whatever else arrives before a thread starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, ParamSpec, TypeVar

from django.apps import apps
from django.db import DatabaseError, connections, router
from django.db.models import Model

from django_sse.conf import conf

P = ParamSpec("P")
R = TypeVar("R")
K = TypeVar("K")
V = TypeVar("V")

THREAD_NAME_PREFIX = "django_sse-db_"
# The first thread's name (with one thread, the only one).
THREAD_NAME = f"{THREAD_NAME_PREFIX}0"

# DB_THREADS by default: databases that serve concurrent readers get a few threads.
DEFAULT_DB_THREADS_SQLITE = 1
DEFAULT_DB_THREADS = 4


def primary(model: type[Model]) -> str:
    """The database events are written to. Streams read there too: a lagging replica could
    show event n + 1 without event n."""
    return router.db_for_write(model)


def db_threads() -> int:
    """How many stream database threads this process runs: ``DB_THREADS``, or by default
    one on SQLite and four on other databases."""
    configured = conf.DB_THREADS
    if configured is not None:
        return configured
    alias = primary(apps.get_model("django_sse", "JobEvent"))
    return _default_db_threads(alias, connections.settings[alias]["ENGINE"])


@functools.cache
def _default_db_threads(alias: str, engine: str) -> int:
    # Asked at every call: looking the connection up (its vendor) from the event loop would
    # make a connection object per task (Django keeps them per async context), so once per
    # database and engine.
    vendor = connections[alias].vendor
    return DEFAULT_DB_THREADS_SQLITE if vendor == "sqlite" else DEFAULT_DB_THREADS


def close_connections() -> None:
    """Close this thread's database connections (outside of any transaction)."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()


# Bumped at each database error on any thread: the other threads' connections went through
# the same outage (a restarted server, a cut network), so each thread starts afresh too before
# its next call, instead of failing once more on a dead connection.
_failures = 0


def _call(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    global _failures
    try:
        return func(*args, **kwargs)
    except DatabaseError:
        # The connection may be broken (server restarted, network cut): start afresh next time.
        _failures += 1
        close_connections()
        raise


class _Work:
    __slots__ = ("call", "future")

    def __init__(self, call: Callable[[], Any], future: Future[Any]) -> None:
        self.call = call
        self.future = future


class DatabaseThreads:
    """Daemon threads running calls, urgent ones before bulk ones (each lane started in
    order). A thread starts when more calls wait than threads are idle, up to
    ``db_threads()`` (a quiet process keeps one thread, and one connection); a thread past a
    lowered count closes its connections and ends."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._urgent: deque[_Work] = deque()
        self._bulk: deque[_Work] = deque()
        # Calls for one thread in particular (closing its connections), by thread index.
        self._own: dict[int, deque[_Work]] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._wanted = 1
        self._idle = 0  # threads waiting for a call

    def submit(self, call: Callable[[], R], *, bulk: bool = False) -> Future[R]:
        future: Future[R] = Future()
        wanted = db_threads()
        with self._ready:
            (self._bulk if bulk else self._urgent).append(_Work(call, future))
            self._resize(wanted)
            self._ready.notify()
        return future

    def submit_everywhere(self, call: Callable[[], Any]) -> list[Future[Any]]:
        """Run ``call`` once on each running thread (none are started for it)."""
        futures: list[Future[Any]] = []
        with self._ready:
            for index, thread in self._threads.items():
                if thread.is_alive():
                    future: Future[Any] = Future()
                    self._own.setdefault(index, deque()).append(_Work(call, future))
                    futures.append(future)
            self._ready.notify_all()
        return futures

    def _resize(self, wanted: int) -> None:
        # Under the lock.
        if wanted < self._wanted:
            self._ready.notify_all()  # the threads past the count end
        self._wanted = wanted
        if len(self._urgent) + len(self._bulk) <= self._idle:
            return  # an idle thread takes it
        for index in range(wanted):
            thread = self._threads.get(index)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self._run,
                    args=(index,),
                    name=f"{THREAD_NAME_PREFIX}{index}",
                    daemon=True,
                )
                self._threads[index] = thread
                self._idle += 1  # until it takes its first call
                thread.start()
                return

    def _next(self, index: int) -> _Work | None:
        """The next call for thread ``index`` (counted idle until it has one), waiting for one;
        None: the thread ends."""
        with self._ready:
            try:
                while True:
                    own = self._own.get(index)
                    if own:
                        return own.popleft()
                    if index >= self._wanted:
                        if self._threads.get(index) is threading.current_thread():
                            del self._threads[index]
                        self._own.pop(index, None)
                        return None
                    if self._urgent:
                        return self._urgent.popleft()
                    if self._bulk:
                        return self._bulk.popleft()
                    self._ready.wait()
            finally:
                self._idle -= 1

    def _available(self) -> None:
        # Idle again before the caller hears back: a caller that submits its next call at once
        # finds this thread, instead of starting another one.
        with self._ready:
            self._idle += 1

    def _run(self, index: int) -> None:
        failures_seen = _failures
        while (work := self._next(index)) is not None:
            if not work.future.set_running_or_notify_cancel():
                self._available()
                continue  # its caller gave up while it waited
            if failures_seen != _failures:
                failures_seen = _failures
                close_connections()  # another thread's failed: this one's may be dead too
            try:
                result = work.call()
            except BaseException as exc:
                self._available()
                work.future.set_exception(exc)
            else:
                self._available()
                work.future.set_result(result)
        close_connections()


_threads = DatabaseThreads()


class Batch(Generic[K, V]):
    """Calls ``run_many(items) -> outcomes`` (one outcome per item, in order: a value, or the
    exception that item raises) made from any loop, gathered while no thread has started them.

    ``run_many`` decides what fails alone (an outcome) and what fails the whole batch (raised:
    every item raises it, as each would have on its own, a broken connection say)."""

    def __init__(
        self,
        run_many: Callable[[list[K]], Sequence[V | BaseException]],
        *,
        bulk: bool = False,
        most: int = 500,
    ) -> None:
        self._run_many = run_many
        self._bulk = bulk
        self._most = most  # items per batch at most
        self._lock = threading.Lock()
        self._open: list[tuple[K, asyncio.Future[V], asyncio.AbstractEventLoop]] | None = None

    @property
    def waiting(self) -> int:
        """Items gathered that no thread has started yet."""
        with self._lock:
            return len(self._open or ())

    async def run(self, item: K) -> V:
        """The outcome of ``item``: its value, or its exception raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        with self._lock:
            batch = self._open
            if batch is None:
                batch = self._open = []
                _threads.submit(functools.partial(self._run, batch), bulk=self._bulk)
            batch.append((item, future, loop))
            if len(batch) >= self._most:
                self._open = None  # full: the next item starts another
        return await future

    def _run(self, batch: list[tuple[K, asyncio.Future[V], asyncio.AbstractEventLoop]]) -> None:
        # On a database thread: from now on, items go to a new batch.
        with self._lock:
            if self._open is batch:
                self._open = None
        outcomes: Sequence[V | BaseException] | BaseException
        try:
            outcomes = _call(self._run_many, [item for item, _future, _loop in batch])
        except BaseException as exc:  # every item raises it: none may wait forever
            outcomes = exc
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[V], Any]]] = {}
        for index, (_item, future, loop) in enumerate(batch):
            outcome = outcomes if isinstance(outcomes, BaseException) else outcomes[index]
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, settled in by_loop.items():
            # One wakeup per loop for the whole batch, not one per item.
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in settled:
        if future.done():
            continue  # its caller gave up (a client that left)
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


async def run_in_db_thread(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``func`` on a stream database thread, ahead of replay pages; return its result."""
    future = _threads.submit(functools.partial(_call, func, *args, **kwargs))
    return await asyncio.wrap_future(future)


async def run_bulk_in_db_thread(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``func`` (a page of a replay) on a stream database thread once no urgent call
    waits; return its result."""
    future = _threads.submit(functools.partial(_call, func, *args, **kwargs), bulk=True)
    return await asyncio.wrap_future(future)


async def aclose_db_thread_connections() -> None:
    """Close the database connections of every stream database thread."""
    futures = _threads.submit_everywhere(close_connections)
    await asyncio.gather(*(asyncio.wrap_future(future) for future in futures))


def close_db_thread_connections() -> None:
    """Blocking variant, for code without an event loop (test teardown, shutdown)."""
    for future in _threads.submit_everywhere(close_connections):
        future.result()

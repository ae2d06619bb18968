"""The per-process hub: one channel-layer subscription per job, shared by every local stream.

A server process runs one hub per event loop. The hub owns one layer channel, adds it to the
group of each job that has at least one open stream here, and runs one ``receive()`` loop that is
never cancelled while it runs (cancelling a pending receive loses messages on Redis layers). Each
event is encoded to bytes once and handed to every local subscriber of its job.

Layers drop messages (a full channel, a Redis outage) and the in-memory layer never sees events
from other processes, so the hub keeps, per job, the highest ``seq`` it has dispatched: a message
that skips ahead makes it read the missing events from the database first, and a database check
every ``POLL_SECONDS`` finds events no message announced. Subscribers thus get every event of a
job in order, exactly once, whatever the layer did.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any, NamedTuple

from channels.layers import BaseChannelLayer

from django_sse import metrics
from django_sse.conf import conf
from django_sse.database import run_in_db_thread
from django_sse.direct import DirectWriter
from django_sse.discovery import Discovery
from django_sse.groups import EVENT_MESSAGE_TYPE, job_group
from django_sse.lifecycle import EVENT_TYPE_RE, TERMINAL_TYPES
from django_sse.pushing import get_layer, register_hub_loop, unregister_hub_loop
from django_sse.queries import StoredEvent, fetch_events, last_seq, last_seqs
from django_sse.resume import MAX_SEQ
from django_sse.sse import encode_event
from django_sse.wakeup import Wakeup

logger = logging.getLogger("django_sse")

# Group membership expires on the layers (a day by default): refresh it well before.
GROUP_REFRESH_SECONDS = 600.0
# Waits between two attempts to receive from a failing layer.
RETRY_DELAYS_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class Delivery(NamedTuple):
    """One event as handed to subscribers: encoded once for the single-job stream."""

    event: StoredEvent
    chunk: bytes
    terminal: bool


class InboxBudget:
    """The bytes of live events one stream may hold before it reads them from the database
    instead (shared by the subscribers of a stream that follows several jobs)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = conf.MAX_BUFFERED_BYTES // 4 if limit is None else limit
        self.used = 0


class Subscriber:
    """One open stream's inbox for one job: ``Delivery`` items, in order.

    The inbox is bounded in bytes: a stream that does not keep up (its client reads slowly, or
    it is busy with a replay) would otherwise hold every event published meanwhile. Past its
    budget the inbox is emptied and only remembers the newest ``seq`` (``behind``): the stream
    reads everything up to it from the database, which is the record, when it gets to it.

    Streams that follow several jobs share one ``wakeup`` and one budget among their
    subscribers. A stream that can write to the server directly sets ``writer`` (see
    ``direct.py``): while it is active, events go straight to the client instead.
    """

    __slots__ = ("behind", "budget", "items", "job_id", "queued", "wakeup", "writer")

    def __init__(
        self, job_id: uuid.UUID, wakeup: Wakeup | None = None, budget: InboxBudget | None = None
    ) -> None:
        self.job_id = job_id
        # Made on the first delivery: a stream written to directly may never need it.
        self.items: deque[Delivery] | None = None
        self.queued = 0  # bytes in items
        self.behind = 0  # > 0: read everything up to this seq from the database
        self.wakeup = wakeup or Wakeup()
        self.budget = budget or InboxBudget()
        self.writer: DirectWriter | None = None

    def deliver(self, item: Delivery) -> None:
        if self.behind:
            self.behind = item.event.seq
        else:
            size = len(item.chunk)
            budget = self.budget
            if budget.used + size > budget.limit:
                self._overflow(item.event.seq)
            else:
                if self.items is None:
                    self.items = deque()
                self.items.append(item)
                self.queued += size
                budget.used += size
        self.wakeup.set()

    def _overflow(self, seq: int) -> None:
        self.behind = seq
        if self.items:
            self.items.clear()
        self.budget.used -= self.queued
        self.queued = 0

    def take(self) -> list[Delivery]:
        """Every queued delivery, oldest first (their bytes leave the budget)."""
        items = self.items
        if not items:
            return []
        taken = list(items)
        items.clear()
        self.budget.used -= self.queued
        self.queued = 0
        return taken

    def take_behind(self) -> int:
        """The seq to read up to from the database (0: nothing to read)."""
        behind, self.behind = self.behind, 0
        return behind

    @property
    def pending(self) -> bool:
        return bool(self.items) or bool(self.behind)


class _Feed:
    """Local state of one job: its subscribers and the newest ``seq`` dispatched to them."""

    __slots__ = ("busy", "held", "ready", "seq", "subscribers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.subscribers: set[Subscriber] = set()
        self.seq: int | None = None  # None until the baseline is read
        self.held: list[StoredEvent] = []  # arrived while the baseline or a backfill was pending
        self.busy = False  # a backfill is running
        self.ready: asyncio.Future[None] = loop.create_future()


def _encode(event: StoredEvent) -> Delivery:
    return Delivery(
        event,
        encode_event(event.data, event=event.type, id=event.seq),
        event.type in TERMINAL_TYPES,
    )


def _parse_message(message: Any) -> tuple[uuid.UUID, StoredEvent] | None:
    """The job and event of a layer message, or None if it is not one ``push_event`` makes."""
    if not isinstance(message, dict):
        return None
    job, seq, type_, data = (message.get(key) for key in ("job", "seq", "event", "data"))
    if not isinstance(job, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    if not (0 < seq <= MAX_SEQ) or not isinstance(type_, str) or not EVENT_TYPE_RE.match(type_):
        return None
    # Compact JSON text is one line; anything else would not be what the database holds.
    if not isinstance(data, str) or "\n" in data or "\r" in data:
        return None
    if len(data) > 4 * conf.MAX_DATA_BYTES:
        return None
    try:
        job_id = uuid.UUID(hex=job)
    except ValueError:
        return None
    return job_id, StoredEvent(seq, type_, data)


def _shape(message: Any) -> str:
    """What a message looks like, for a log line: its keys and the types of their values."""
    if not isinstance(message, dict):
        return type(message).__name__
    fields = ", ".join(
        f"{str(key)[:40]!r}: {type(value).__name__}" for key, value in list(message.items())[:20]
    )
    return "{" + fields + "}"


class Hub:
    """Receives every event of the jobs streamed in this process and fans them out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.feeds: dict[uuid.UUID, _Feed] = {}
        self.closed = False
        self._layer: BaseChannelLayer | None = get_layer()
        self._channel: str | None = None
        self._group_lock = asyncio.Lock()
        self._regroup_needed = False
        self._group_failing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._receiver: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        # The all-jobs streams' shared look for new jobs (its task is one of the hub's).
        self.discovery = Discovery(self._spawn)

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(
        self,
        job_id: uuid.UUID,
        wakeup: Wakeup | None = None,
        budget: InboxBudget | None = None,
    ) -> Subscriber:
        """Start receiving ``job_id``'s events. Every event committed after this returns is
        delivered; anything older is in the database for the caller's replay."""
        self._start()
        subscriber = Subscriber(job_id, wakeup, budget)
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = _Feed(self.loop)
            # In a task of the hub, not of this stream: a client leaving halfway must not
            # cancel it for the other streams of the job waiting on it.
            self._spawn(self._establish(job_id, feed))
        feed.subscribers.add(subscriber)
        try:
            await asyncio.shield(feed.ready)
        except BaseException:
            self.unsubscribe(subscriber)
            raise
        return subscriber

    async def _establish(self, job_id: uuid.UUID, feed: _Feed) -> None:
        try:
            await self._group_add(job_id)
            # Read after joining the group: anything newer arrives as a message or is found by
            # the poll, anything older is in the database.
            feed.seq = await run_in_db_thread(last_seq, job_id)
        except BaseException as exc:
            self._drop_feed(job_id, feed)
            feed.ready.set_exception(exc)
            feed.ready.exception()  # retrieved here; every waiting subscriber re-raises it
            if not isinstance(exc, Exception):
                raise
            return
        feed.ready.set_result(None)
        if self.feeds.get(job_id) is not feed:
            # Every subscriber left while the group was being joined.
            self._drop_feed_membership(job_id)
            return
        self._release_held(job_id, feed)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber``; leaves the job's group when it was the last one."""
        feed = self.feeds.get(subscriber.job_id)
        if feed is None:
            return
        feed.subscribers.discard(subscriber)
        if not feed.subscribers:
            self._drop_feed(subscriber.job_id, feed)

    def _drop_feed(self, job_id: uuid.UUID, feed: _Feed) -> None:
        if self.feeds.get(job_id) is feed:
            del self.feeds[job_id]
            self._drop_feed_membership(job_id)

    def _drop_feed_membership(self, job_id: uuid.UUID) -> None:
        if self._layer is not None and self._channel is not None and not self.closed:
            self._spawn(self._group_discard(job_id))

    # -- incoming events -------------------------------------------------------------------

    def on_message(self, message: Any) -> None:
        """A layer message for one of our groups. Anything malformed is dropped (the event, if
        it exists, is read from the database by the poll) and logged by its shape, never its
        data."""
        event = _parse_message(message)
        if event is None:
            logger.warning("Ignored a malformed channel-layer message: %s", _shape(message))
            return
        job_id, stored = event
        feed = self.feeds.get(job_id)
        if feed is not None:
            self._offer(job_id, feed, [stored])

    def _offer(self, job_id: uuid.UUID, feed: _Feed, events: Iterable[StoredEvent]) -> None:
        if feed.seq is None or feed.busy:
            feed.held.extend(events)
            return
        ordered = sorted(events)
        for index, event in enumerate(ordered):
            if event.seq <= feed.seq:
                continue  # already dispatched
            if event.seq > feed.seq + 1:
                # Something in between was dropped: read it from the database first.
                feed.held.extend(ordered[index:])
                self._start_backfill(job_id, feed, upto=event.seq)
                return
            self._dispatch(feed, event)

    def _dispatch(self, feed: _Feed, event: StoredEvent) -> None:
        item = _encode(event)
        seq, chunk, terminal = event.seq, item.chunk, item.terminal
        now = self.loop.time()
        # A copy: a write runs the server's code, which must not be able to change the set
        # under the loop.
        for subscriber in tuple(feed.subscribers):
            writer = subscriber.writer
            if writer is not None and writer.active:
                try:
                    if writer.write(seq, chunk, terminal, now):
                        continue
                except Exception as exc:
                    # A bug, not a client gone (the writer catches the server's errors): this
                    # stream ends (its browser resumes from what it got); the others go on.
                    logger.exception("Writing event %d to a stream failed.", seq)
                    writer.fail(exc)
                    continue
            subscriber.deliver(item)
        feed.seq = seq

    def _release_held(self, job_id: uuid.UUID, feed: _Feed) -> None:
        held, feed.held = feed.held, []
        if held:
            self._offer(job_id, feed, held)

    def _start_backfill(self, job_id: uuid.UUID, feed: _Feed, upto: int) -> None:
        feed.busy = True
        self._spawn(self._backfill(job_id, feed, upto))

    async def _backfill(self, job_id: uuid.UUID, feed: _Feed, upto: int) -> None:
        ok = False
        try:
            while feed.seq is not None and feed.seq < upto and self.feeds.get(job_id) is feed:
                events = await run_in_db_thread(
                    fetch_events, job_id, feed.seq, upto=upto, limit=conf.REPLAY_PAGE_SIZE
                )
                if not events:
                    # The database does not have what a message announced (yet): the held
                    # events wait for the next poll instead of asking again at once.
                    return
                metrics.gap_filled(len(events))
                for event in events:
                    if event.seq <= feed.seq:
                        continue
                    if event.seq > feed.seq + 1:
                        # Later events are committed, so these never will be (deleted by hand?).
                        logger.warning(
                            "Events %d to %d of job %s are missing from the database.",
                            feed.seq + 1,
                            event.seq - 1,
                            job_id,
                        )
                    self._dispatch(feed, event)
            ok = True
        except Exception as exc:
            logger.warning("Could not read events of job %s from the database: %r", job_id, exc)
        finally:
            feed.busy = False
        # After a failure the held events wait for the next poll rather than retrying at once.
        if ok:
            self._release_held(job_id, feed)

    # -- background tasks ------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # A fresh context: hub tasks must not inherit the request's thread-sensitive context
        # (they outlive the request that created them).
        task = contextvars.Context().run(self.loop.create_task, coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start(self) -> None:
        if self._poller is None:
            self._poller = self._spawn(self._poll_loop())

    async def _ensure_channel(self) -> str | None:
        if self._layer is None:
            return None
        if self._channel is None:
            self._channel = await self._layer.new_channel(prefix="django_sse")
            self._receiver = self._spawn(self._receive_loop())
        return self._channel

    async def _group_add(self, job_id: uuid.UUID) -> None:
        async with self._group_lock:
            try:
                channel = await self._ensure_channel()
                if channel is not None and self._layer is not None:
                    await self._layer.group_add(job_group(job_id), channel)
            except Exception as exc:
                # Streams still get every event, through the database poll.
                self._regroup_needed = True
                if not self._group_failing:
                    self._group_failing = True
                    logger.warning(
                        "Could not join the group of job %s (%r); retrying at every poll, and "
                        "reading events from the database meanwhile.",
                        job_id,
                        exc,
                    )
            else:
                if self._group_failing:
                    self._group_failing = False
                    logger.info("Joining channel-layer groups works again.")

    async def _group_discard(self, job_id: uuid.UUID) -> None:
        async with self._group_lock:
            if job_id in self.feeds or self._channel is None or self._layer is None:
                return  # subscribed again meanwhile
            try:
                await self._layer.group_discard(job_group(job_id), self._channel)
            except Exception as exc:
                logger.warning("Could not leave the group of job %s: %r", job_id, exc)

    async def _regroup(self) -> None:
        """Join the group of every job again (after a layer outage, and periodically)."""
        self._regroup_needed = False
        for job_id in list(self.feeds):
            await self._group_add(job_id)

    async def _receive_loop(self) -> None:
        assert self._layer is not None and self._channel is not None
        failures = 0
        while True:
            if self._regroup_needed:
                await self._regroup()
            try:
                message = await self._layer.receive(self._channel)
            except Exception as exc:
                metrics.layer_receive_failed()
                if failures == 0:
                    logger.warning(
                        "Receiving from the channel layer failed (%r); retrying, and reading "
                        "events from the database meanwhile.",
                        exc,
                    )
                delay = RETRY_DELAYS_SECONDS[min(failures, len(RETRY_DELAYS_SECONDS) - 1)]
                failures += 1
                self._regroup_needed = True
                await asyncio.sleep(delay)
                continue
            if failures:
                logger.info("Receiving from the channel layer works again.")
                failures = 0
            try:
                if isinstance(message, dict) and message.get("type") == EVENT_MESSAGE_TYPE:
                    self.on_message(message)
            except Exception:
                # A bug, not the layer: this message is lost to the fast path (the poll reads
                # its event from the database), the loop goes on for every other job.
                logger.exception("Handling a channel-layer message failed.")

    async def _poll_loop(self) -> None:
        next_refresh = time.monotonic() + GROUP_REFRESH_SECONDS
        failing = False
        while True:
            await asyncio.sleep(conf.POLL_SECONDS)
            if not self.feeds:
                continue
            refresh = time.monotonic() >= next_refresh
            if self._layer is not None and (self._regroup_needed or refresh):
                # After a failed join (the layer was down), again at every poll until it works:
                # a layer whose receive() does not fail during an outage (pub/sub) would
                # otherwise leave these jobs on the database poll for good.
                if refresh:
                    next_refresh = time.monotonic() + GROUP_REFRESH_SECONDS
                await self._regroup()
            ready = {
                job_id: feed
                for job_id, feed in self.feeds.items()
                if feed.seq is not None and not feed.busy
            }
            if not ready:
                continue
            try:
                latest = await run_in_db_thread(last_seqs, list(ready))
            except Exception as exc:
                if not failing:
                    logger.warning("Checking for new events in the database failed: %r", exc)
                failing = True
                continue
            if failing:
                logger.info("Checking for new events in the database works again.")
                failing = False
            for job_id, seq in latest.items():
                feed = ready[job_id]
                if self.feeds.get(job_id) is feed and feed.seq is not None and not feed.busy:
                    if seq > feed.seq:
                        self._start_backfill(job_id, feed, upto=seq)
                    elif feed.held:
                        self._release_held(job_id, feed)

    async def aclose(self) -> None:
        """Stop the hub's tasks and leave every group (used at shutdown and in tests)."""
        self.closed = True
        if _hubs.get(self.loop) is self:
            del _hubs[self.loop]
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._layer is not None and self._channel is not None:
            for job_id in list(self.feeds):
                try:
                    await self._layer.group_discard(job_group(job_id), self._channel)
                except Exception as exc:
                    logger.warning("Could not leave the group of job %s: %r", job_id, exc)
        self.feeds.clear()


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


def get_hub() -> Hub:
    """The hub of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.closed:
        hub = _hubs[loop] = Hub(loop)
        register_hub_loop(loop)  # pushing.py sends in-memory layer messages here
    return hub


async def close_hub() -> None:
    """Close the running loop's hub, if any."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is not None:
        unregister_hub_loop(loop)
        await hub.aclose()

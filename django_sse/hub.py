"""The per-process hub: one channel-layer subscription per job, shared by every local stream.

A server process runs one hub per event loop. The hub owns one layer channel, adds it to the
group of each job that has at least one open stream here, and runs one ``receive()`` loop that is
never cancelled while it runs (cancelling a pending receive loses messages on Redis layers). Each
message goes to its job's ``feed.JobFeed``, which hands the event, encoded once, to every local
subscriber of the job in order, exactly once (``feed.py`` says how). The hub does not know how
a subscriber sends what it gets (``feed.Subscriber``).

The layer is a fast path, the database the record: every ``POLL_SECONDS`` one query finds the
events of all followed jobs that no message announced.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from channels.layers import BaseChannelLayer

from django_sse import metrics
from django_sse.conf import conf
from django_sse.database import Batch
from django_sse.discovery import Discovery
from django_sse.event_message import message_shape, parse_batch_message, parse_event_message
from django_sse.feed import JobFeed, Subscriber, catch_up, last_seqs
from django_sse.groups import EVENT_MESSAGE_TYPE, job_group
from django_sse.pushing import (
    BATCH_MESSAGE_MAX_BYTES,
    BATCH_MESSAGE_TYPE,
    get_layer,
    register_hub_loop,
    unregister_hub_loop,
)
from django_sse.replay import StoredEvent

logger = logging.getLogger("django_sse")

# Group membership expires on the layers (a day by default): refresh it well before.
GROUP_REFRESH_SECONDS = 600.0
# Waits between two attempts to receive from a failing layer.
RETRY_DELAYS_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
# What pushing.py sends: one event, or a batch of consecutive ones. Other types are not ours
# (or from a later version) and are skipped without a word: the poll finds their events.
_MESSAGE_TYPES = frozenset({EVENT_MESSAGE_TYPE, BATCH_MESSAGE_TYPE})


def _baselines(job_ids: list[uuid.UUID]) -> list[int]:
    found = last_seqs(job_ids)
    return [found.get(job_id, 0) for job_id in job_ids]


# The newest seq of jobs followed together (the streams of a reconnection storm), one query.
baselines: Batch[uuid.UUID, int] = Batch(_baselines)


class Hub:
    """Receives every event of the jobs streamed in this process and fans them out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.feeds: dict[uuid.UUID, JobFeed] = {}
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

    async def subscribe(self, job_id: uuid.UUID, subscriber: Subscriber) -> None:
        """Start handing ``job_id``'s events to ``subscriber``. Every event committed after this
        returns is handed to it; anything older is in the database for the caller's replay."""
        self._start()
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = JobFeed(job_id, self.loop, self._spawn)
            # In a task of the hub, not of this stream: a client leaving halfway must not
            # cancel it for the other streams of the job waiting on it.
            self._spawn(self._establish(feed))
        feed.subscribers.add(subscriber)
        if feed.ready.done() and feed.ready.exception() is None:
            return  # followed already: a set insert, nothing awaited
        try:
            await asyncio.shield(feed.ready)
        except BaseException:
            self.unsubscribe(job_id, subscriber)
            raise

    def replace(self, job_id: uuid.UUID, old: Subscriber, new: Subscriber) -> None:
        """Hand ``job_id``'s events to ``new`` instead of ``old`` from now on (a stream that
        starts writing to the server itself)."""
        feed = self.feeds.get(job_id)
        if feed is not None and old in feed.subscribers:
            feed.subscribers.discard(old)
            feed.subscribers.add(new)

    async def _establish(self, feed: JobFeed) -> None:
        job_id = feed.job_id
        try:
            await self._group_add(job_id)
            # Read after joining the group: anything newer arrives as a message or is found by
            # the poll, anything older is in the database.
            feed.seq = await baselines.run(job_id)
        except BaseException as exc:
            self._drop_feed(feed)
            feed.ready.set_exception(exc)
            feed.ready.exception()  # retrieved here; every waiting subscriber re-raises it
            if not isinstance(exc, Exception):
                raise
            return
        feed.ready.set_result(None)
        if feed.closed:
            # Every subscriber left while the group was being joined.
            self._drop_feed_membership(job_id)
            return
        feed.release_held()

    def unsubscribe(self, job_id: uuid.UUID, subscriber: Subscriber) -> None:
        """Stop handing events to ``subscriber``; leaves the job's group when it was the last."""
        feed = self.feeds.get(job_id)
        if feed is None:
            return
        feed.subscribers.discard(subscriber)
        if not feed.subscribers:
            self._drop_feed(feed)

    def _drop_feed(self, feed: JobFeed) -> None:
        feed.closed = True
        if self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]
            self._drop_feed_membership(feed.job_id)

    def _drop_feed_membership(self, job_id: uuid.UUID) -> None:
        if self._layer is not None and self._channel is not None and not self.closed:
            self._spawn(self._group_discard(job_id))

    # -- incoming events -------------------------------------------------------------------

    def on_message(self, message: Any) -> None:
        """A layer message for one of our groups. Anything malformed is dropped (the event, if
        it exists, is read from the database by the poll) and logged by its shape, never its
        data."""
        parsed: tuple[uuid.UUID, list[StoredEvent]] | None
        if isinstance(message, dict) and message.get("type") == BATCH_MESSAGE_TYPE:
            parsed = parse_batch_message(message, BATCH_MESSAGE_MAX_BYTES)
        else:
            single = parse_event_message(message)
            parsed = None if single is None else (single[0], [single[1]])
        if parsed is None:
            logger.warning("Ignored a malformed channel-layer message: %s", message_shape(message))
            return
        job_id, events = parsed
        feed = self.feeds.get(job_id)
        if feed is not None:
            feed.offer(events)

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
                if isinstance(message, dict) and message.get("type") in _MESSAGE_TYPES:
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
            try:
                if not await catch_up(list(self.feeds.values())):
                    continue
            except Exception as exc:
                if not failing:
                    logger.warning("Checking for new events in the database failed: %r", exc)
                failing = True
                continue
            if failing:
                logger.info("Checking for new events in the database works again.")
                failing = False

    async def aclose(self) -> None:
        """Stop the hub's tasks and leave every group (used at shutdown and in tests)."""
        self.closed = True
        if _hubs.get(self.loop) is self:
            del _hubs[self.loop]
            unregister_hub_loop(self.loop)
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
        for feed in self.feeds.values():
            feed.closed = True
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
    hub = _hubs.get(asyncio.get_running_loop())
    if hub is not None:
        await hub.aclose()

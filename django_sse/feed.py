"""One job's live events in one process, handed to its subscribers in order, exactly once.

This is where the ordering guarantee lives. Layers drop messages (a full channel, a Redis
outage), deliver some twice, and the in-memory layer never sees events from other processes, so
a ``JobFeed`` keeps the highest ``seq`` it has handed out: a duplicate or stale message is
dropped, a message that skips ahead makes the feed read the missing events from the database
first (once, for every subscriber of the job), and the hub's poll finds events no message
announced. Every subscriber thus gets each event committed after it subscribed, in ``seq``
order, exactly once. Streams trust that (see ``stream.py`` for the one check they keep: a
replay racing the live events).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol

from django_sse import metrics
from django_sse.conf import conf
from django_sse.database import primary, run_in_db_thread
from django_sse.inbox import EncodedEvent, encode_live
from django_sse.models import Job
from django_sse.replay import StoredEvent, fetch_events

logger = logging.getLogger("django_sse")

# Larger IN lists are split, to stay under every backend's parameter limit.
_IN_CHUNK = 500

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class Subscriber(Protocol):
    """What the hub hands a job's events to: a stream's ``inbox.Inbox``, or its
    ``direct.DirectWriter`` while it writes to the server itself. ``now`` is the loop's time
    when the event is handed out. ``deliver`` must not raise; should it (a bug), the feed logs
    it and calls ``miss`` with the event's ``seq``, and the stream reads that event from the
    database, so even then its browser misses nothing."""

    def deliver(self, item: EncodedEvent, now: float) -> None: ...

    def deliver_many(self, items: Sequence[EncodedEvent], now: float) -> None:
        """Several events in ``seq`` order (a batch from ``publish_many``, a page of a gap
        fill), which the subscriber may write as one chunk. Same contract as ``deliver``."""
        ...

    def miss(self, seq: int) -> None: ...


def last_seqs(job_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
    """The newest ``seq`` of each job that still exists (on the stream database thread)."""
    ids = list(job_ids)
    found: dict[uuid.UUID, int] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        rows = Job.objects.db_manager(primary(Job)).filter(pk__in=chunk)
        found.update(rows.values_list("pk", "last_seq"))
    return found


def last_seq(job_id: uuid.UUID) -> int:
    return last_seqs([job_id]).get(job_id, 0)


async def catch_up(feeds: Iterable[JobFeed]) -> bool:
    """Have every feed the database holds newer events of read them, with one query for all
    (it raises what the query raises); False if no feed could be asked about."""
    ready = {feed.job_id: feed for feed in feeds if feed.seq is not None and not feed.busy}
    if not ready:
        return False
    latest = await run_in_db_thread(last_seqs, list(ready))
    for job_id, seq in latest.items():
        feed = ready[job_id]
        if not feed.closed and feed.seq is not None and not feed.busy:
            if seq > feed.seq:
                feed.fill_gap(upto=seq)
            elif feed.held:
                feed.release_held()
    return True


def _span(events: Sequence[StoredEvent]) -> str:
    first, last = events[0].seq, events[-1].seq
    return f"event {first}" if first == last else f"events {first} to {last}"


class JobFeed:
    """The subscribers of one job in this process and the newest ``seq`` handed to them (see
    the module docstring)."""

    __slots__ = ("busy", "closed", "held", "job_id", "loop", "ready", "seq", "spawn", "subscribers")

    def __init__(self, job_id: uuid.UUID, loop: asyncio.AbstractEventLoop, spawn: Spawn) -> None:
        self.job_id = job_id
        self.loop = loop
        self.spawn = spawn  # runs the gap fills, in a task of the hub
        self.subscribers: set[Subscriber] = set()
        self.seq: int | None = None  # None until the baseline is read
        self.held: list[StoredEvent] = []  # arrived while the baseline or a gap fill was pending
        self.busy = False  # a gap fill is running
        self.closed = False  # the hub let go of the feed (its last subscriber left)
        self.ready: asyncio.Future[None] = loop.create_future()

    def offer(self, events: Iterable[StoredEvent]) -> None:
        """Events of the job, from a layer message or the database, in any order."""
        if self.seq is None or self.busy:
            self.held.extend(events)
            return
        ordered = sorted(events)
        run: list[StoredEvent] = []  # the next events, consecutive: handed out together
        for index, event in enumerate(ordered):
            expected = (run[-1].seq if run else self.seq) + 1
            if event.seq < expected:
                continue  # already handed out (or twice in the message)
            if event.seq > expected:
                # Something in between was dropped: read it from the database first.
                self._hand_out(run)
                self.held.extend(ordered[index:])
                self.fill_gap(upto=event.seq)
                return
            run.append(event)
        self._hand_out(run)

    def release_held(self) -> None:
        held, self.held = self.held, []
        if held:
            self.offer(held)

    def _hand_out(self, events: Sequence[StoredEvent]) -> None:
        """Hand ``events`` (newer than ``seq``, in order) to every subscriber at once: a batch
        stays one write on a stream that is written to directly."""
        if not events:
            return
        items = [encode_live(event) for event in events]
        now = self.loop.time()
        # A copy: a subscriber may run the server's code, which must not be able to change the
        # set under the loop.
        for subscriber in tuple(self.subscribers):
            try:
                if len(items) == 1:
                    subscriber.deliver(items[0], now)
                else:
                    subscriber.deliver_many(items, now)
            except Exception:
                # A bug: this subscriber's stream reads the events from the database instead;
                # the others go on.
                logger.exception("Handing %s of job %s out failed.", _span(events), self.job_id)
                self._missed(subscriber, events[-1].seq)
        self.seq = events[-1].seq

    def _missed(self, subscriber: Subscriber, seq: int) -> None:
        try:
            subscriber.miss(seq)
        except Exception:
            logger.exception(
                "Telling a stream of job %s to read event %d failed.", self.job_id, seq
            )

    def fill_gap(self, upto: int) -> None:
        """Read the events after ``seq`` up to ``upto`` from the database, in a task, holding
        whatever arrives meanwhile."""
        self.busy = True
        self.spawn(self._fill_gap(upto))

    async def _fill_gap(self, upto: int) -> None:
        ok = False
        try:
            while self.seq is not None and self.seq < upto and not self.closed:
                events = await run_in_db_thread(
                    fetch_events, self.job_id, self.seq, upto=upto, limit=conf.REPLAY_PAGE_SIZE
                )
                if not events:
                    # The database does not have what a message announced (yet): the held
                    # events wait for the next poll instead of asking again at once.
                    return
                metrics.gap_filled(len(events))
                newer = [event for event in events if event.seq > self.seq]
                expected = self.seq + 1
                for event in newer:
                    if event.seq > expected:
                        # Later events are committed, so these never will be (deleted by hand?).
                        logger.warning(
                            "Events %d to %d of job %s are missing from the database.",
                            expected,
                            event.seq - 1,
                            self.job_id,
                        )
                    expected = event.seq + 1
                self._hand_out(newer)
            ok = True
        except Exception as exc:
            logger.warning(
                "Could not read events of job %s from the database: %r", self.job_id, exc
            )
        finally:
            self.busy = False
        # After a failure the held events wait for the next poll rather than retrying at once.
        if ok:
            self.release_held()

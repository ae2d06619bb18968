"""One stream for all of a visitor's jobs (``django_sse:events``).

It follows every job the visitor owns (their user's, or their anonymous session's), including
jobs started after it opened (found for all such streams of the process at once, see
``discovery.py``), through the same per-process hub as the single-job stream. Each event says
which job it belongs to::

    id: <resume point, see resume.py>
    event: progress
    data: {"job":"<uuid>","seq":4,"data":{"current":4,"total":20,"message":"..."}}

The first connection replays the history of the jobs still running; a reconnection resumes every
job where it left off, and replays from the start any job created in the meantime. Its life cycle
(heartbeats, the authorization deadline, bounds, the close) is ``streaming.py``'s.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING

from django_sse.admission import Ticket
from django_sse.auth import same_identity
from django_sse.conf import conf
from django_sse.database import run_bulk_in_db_thread, run_in_db_thread
from django_sse.discovery import JobRow, find_jobs
from django_sse.hub import Hub, get_hub
from django_sse.identity import Identity, session_hashes
from django_sse.inbox import Inbox, InboxBudget
from django_sse.lifecycle import TERMINAL_TYPES
from django_sse.replay import FIRST_PAGE_EVENTS, StoredEvent, fetch_page, next_page_limit
from django_sse.resume import MARGIN_SECONDS, ResumePoint, encode_resume_point, job_ref
from django_sse.sse import encode_event
from django_sse.streaming import EventStream

if TYPE_CHECKING:
    from django.http import HttpRequest

    from django_sse.sink import Sink

logger = logging.getLogger("django_sse")


class _Tracked:
    """One job the stream follows: its cursor (the last ``seq`` sent) and its inbox."""

    __slots__ = ("created", "finished", "inbox", "seq")

    def __init__(self, created: float, seq: int) -> None:
        self.created = created
        self.seq = seq
        self.finished = False
        self.inbox: Inbox | None = None  # None: not subscribed (finished)


class SessionStream(EventStream):
    """The body of one SSE response following all of a visitor's jobs."""

    kind = "Session stream"
    metric_kind = "session"

    def __init__(
        self,
        request: HttpRequest,
        identity: Identity,
        only: frozenset[uuid.UUID] | None,
        resume: ResumePoint | None,
        ticket: Ticket,
        checked_at: float | None = None,
        *,
        sink: Sink | None = None,
    ) -> None:
        super().__init__(request, identity, ticket, checked_at, sink=sink)
        self.only = only
        self.resume = resume
        self.jobs: dict[uuid.UUID, _Tracked] = {}
        # The time of the last look for new jobs (a Unix time, the resume point's horizon).
        self.horizon = 0
        # Jobs found by the shared look and not yet followed, and the time of the last look.
        self.found: list[JobRow] = []
        self.found_at = 0
        self.hub: Hub | None = None  # the hub it subscribed at (cleanup leaves that one)
        # The hashes an anonymous visitor's jobs may carry (for the shared look).
        self.session_hashes = (
            session_hashes(identity.session_key)
            if identity.user_id is None and identity.session_key
            else []
        )
        # One budget for the inboxes of every job the stream follows.
        self.inbox_budget = InboxBudget()

    def closed_fields(self) -> str:
        return f"user={self.identity.label} jobs={len(self.jobs)} events={self.sent}"

    async def authorize(self) -> bool:
        return await run_in_db_thread(same_identity, self.identity)

    # -- the resume point ------------------------------------------------------------------

    def resume_point(self) -> str:
        oldest = self.horizon - MARGIN_SECONDS
        listed = {
            job_id: tracked.seq
            for job_id, tracked in self.jobs.items()
            if not tracked.finished or tracked.created >= oldest
        }
        return encode_resume_point(self.horizon, listed)

    def _encode(self, job_id: uuid.UUID, event: StoredEvent) -> bytes:
        tracked = self.jobs[job_id]
        tracked.seq = event.seq
        if event.type in TERMINAL_TYPES:
            tracked.finished = True
        self.sent += 1
        data = f'{{"job":"{job_id}","seq":{event.seq},"data":{event.data}}}'
        return encode_event(data, event=event.type, id=self.resume_point())

    # -- finding jobs ----------------------------------------------------------------------

    async def subscribe(self) -> None:
        # Registered first: a job created while the first look runs is found by the next.
        hub = self.hub = get_hub()
        hub.discovery.add(self)
        self.horizon = int(time.time())
        if self.resume is None:
            # Recent finished jobs too, as already known: a later look for new jobs (which
            # goes back MARGIN_SECONDS) must not mistake them for new ones.
            since, refs = self.horizon - MARGIN_SECONDS, list[str]()
        else:
            since = self.resume.horizon - MARGIN_SECONDS
            refs = list(self.resume.positions)
        rows = await run_in_db_thread(
            find_jobs, self.identity, self.only, created_since=since, running=True, refs=refs
        )
        all_refs = [job_ref(row.pk) for row in rows]
        for row in rows:
            seq = self._starting_seq(row, all_refs)
            if seq is not None:
                await self._follow(row, seq)

    def discovered(self, rows: list[JobRow], now: float) -> None:
        """The shared look found these jobs of the visitor (known ones included) at ``now``."""
        waiting = {row.pk for row in self.found}
        new = [
            row
            for row in rows
            if row.pk not in self.jobs
            and row.pk not in waiting
            and (self.only is None or row.pk in self.only)
        ]
        self.found_at = max(self.found_at, int(now))
        if new:
            self.found.extend(new)
            self.wakeup.set()
        elif not self.found:
            # The horizon moves only once every job found so far is followed: an id written
            # meanwhile must not claim that a job still waiting was sent.
            self.horizon = max(self.horizon, self.found_at)

    async def _follow(self, row: JobRow, seq: int) -> None:
        tracked = self.jobs[row.pk] = _Tracked(row.created, seq)
        tracked.finished = row.finished and seq >= row.last_seq
        if not row.finished:
            hub = self.hub or get_hub()
            inbox = Inbox(self.wakeup, self.inbox_budget)
            await hub.subscribe(row.pk, inbox)
            tracked.inbox = inbox

    def _starting_seq(self, row: JobRow, refs: list[str]) -> int | None:
        """Where a job found by the first look starts: after what the browser has, or at the
        beginning; None for a job the browser already has in full."""
        resume = self.resume
        if resume is None:
            # A first connection: running jobs from their beginning; finished ones count as
            # known and are not sent.
            return row.last_seq if row.finished else 0
        ref = job_ref(row.pk)
        if ref in resume.positions:
            if refs.count(ref) != 1:
                # Two jobs share the 8 digits: which one the position is of is unknown. From
                # the start (the client drops what it has) rather than risk skipping an end.
                return 0
            position = resume.positions[ref]
            if position > row.last_seq:
                # Not a position this job ever had: what the browser has is unknown.
                return row.last_seq if row.finished else 0
            return position
        if not row.finished or row.created >= resume.horizon - MARGIN_SECONDS:
            return 0
        # Finished before the browser's horizon and not listed: sent in full. Followed as known
        # and finished, so that the look for new jobs (which sees jobs finished within the
        # margin) does not take it for a new one.
        return row.last_seq

    # -- the body --------------------------------------------------------------------------

    async def replay(self) -> AsyncGenerator[bytes, None]:
        for job_id in list(self.jobs):
            async for chunk in self._read(job_id):
                yield chunk

    async def _read(
        self, job_id: uuid.UUID, upto: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """A job's stored events after what was sent (up to ``upto``), a page per chunk."""
        tracked = self.jobs[job_id]
        most, max_bytes = conf.REPLAY_PAGE_SIZE, conf.MAX_BUFFERED_BYTES // 4
        limit = min(most, FIRST_PAGE_EVENTS)
        while not tracked.finished:
            page = await run_bulk_in_db_thread(
                fetch_page, job_id, tracked.seq, upto=upto, limit=limit, max_bytes=max_bytes
            )
            # Each event's id lists the positions of the visitor's other jobs: a page's chunk
            # can outgrow its data. Chunks are cut at the page's byte limit too.
            parts: list[bytes] = []
            size = 0
            for event in page.events:
                if event.seq <= tracked.seq:
                    continue
                encoded = self._encode(job_id, event)
                parts.append(encoded)
                size += len(encoded)
                if size >= max_bytes:
                    yield b"".join(parts)
                    parts, size = [], 0
            if parts:
                yield b"".join(parts)
            if not page.more:
                return
            limit = next_page_limit(page, max_bytes, most)

    async def drain(self) -> AsyncGenerator[bytes, None]:
        while self.found:
            row = self.found[0]
            if row.pk not in self.jobs:
                await self._follow(row, 0)
                async with aclosing(self._read(row.pk)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            self.found.pop(0)
        self.horizon = max(self.horizon, self.found_at)
        for job_id, tracked in list(self.jobs.items()):
            inbox = tracked.inbox
            if inbox is None:
                continue
            behind = inbox.take_behind()
            if behind > tracked.seq:
                # The inbox overflowed: what it dropped is in the database.
                async with aclosing(self._read(job_id, upto=behind)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            parts: list[bytes] = []
            for item in inbox.take():
                # Skipped: what the replay read from the database first (the hub hands out the
                # rest in order, exactly once, see stream.py).
                if not tracked.finished and item.event.seq > tracked.seq:
                    parts.append(self._encode(job_id, item.event))
            if parts:
                yield b"".join(parts)
            if tracked.finished:
                (self.hub or get_hub()).unsubscribe(job_id, inbox)
                tracked.inbox = None

    def cleanup(self) -> None:
        hub = self.hub
        if hub is None:
            return
        hub.discovery.remove(self)
        for job_id, tracked in self.jobs.items():
            if tracked.inbox is not None:
                hub.unsubscribe(job_id, tracked.inbox)


def parse_only(raw: str | None) -> frozenset[uuid.UUID] | None:
    """``?jobs=<uuid>,<uuid>``: follow only these jobs. Raises ValueError if malformed."""
    if raw is None:
        return None
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts or len(parts) > 100:
        raise ValueError("jobs must list 1 to 100 job ids, separated by commas.")
    try:
        return frozenset(uuid.UUID(p) for p in parts)
    except ValueError:
        raise ValueError("jobs must list job ids (UUIDs), separated by commas.") from None

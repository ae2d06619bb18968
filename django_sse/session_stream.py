"""One stream for all of a session's jobs (``django_sse:events``).

It follows every job the visitor owns (their user's, or their anonymous session's), including
jobs started after it opened, through the same per-process hub as the single-job stream. Each
event says which job it belongs to::

    id: <resume point, see resume.py>
    event: progress
    data: {"job":"<uuid>","seq":4,"data":{"current":4,"total":20,"message":"..."}}

The first connection replays the history of the jobs still running; a reconnection resumes every
job where it left off, and replays from the start any job created in the meantime.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError
from django.db.models import Q

from django_sse.asgi import DETACH, Sink, stream_body
from django_sse.auth import same_identity
from django_sse.conf import conf
from django_sse.database import run_in_db_thread
from django_sse.hub import Subscriber, get_hub
from django_sse.queries import StoredEvent, fetch_events, primary
from django_sse.resume import MARGIN_SECONDS, ResumePoint, encode_resume_point, job_ref
from django_sse.sse import HEARTBEAT, encode_event, encode_retry
from django_sse.stream import describe_user
from django_sse.threads import release_request_thread
from django_sse.validation import TERMINAL_TYPES
from django_sse.wakeup import Wakeup

if TYPE_CHECKING:
    from django.http import HttpRequest

logger = logging.getLogger("django_sse")

# (id, created_at as a Unix time, finished?, last_seq)
JobRow = tuple[uuid.UUID, float, bool, int]


def find_jobs(
    owner_id: Any,
    session_key: str | None,
    only: frozenset[uuid.UUID] | None,
    *,
    created_since: float | None,
    running: bool = False,
    refs: Iterable[str] = (),
) -> list[JobRow]:
    """The visitor's jobs that were created since a time, are still running, or whose id starts
    with one of ``refs``. Runs on the stream database thread."""
    from django_sse.models import ACTIVE_STATUSES, Job

    jobs = Job.objects.db_manager(primary(Job))
    if owner_id is not None:
        jobs = jobs.filter(owner_id=owner_id)
    else:
        jobs = jobs.filter(owner__isnull=True, session_key=session_key or "-")
    if only is not None:
        jobs = jobs.filter(pk__in=only)
    wanted = Q(pk__in=[])
    if created_since is not None:
        since = datetime.fromtimestamp(created_since, tz=timezone.utc)
        wanted |= Q(created_at__gte=since) | Q(finished_at__gte=since)
    if running:
        wanted |= Q(status__in=ACTIVE_STATUSES)
    for ref in refs:
        # Every UUID that starts with these 8 hex digits.
        low = uuid.UUID(ref + "0" * 24)
        high = uuid.UUID(ref + "f" * 24)
        wanted |= Q(pk__gte=low, pk__lte=high)
    rows = jobs.filter(wanted).values_list("pk", "created_at", "status", "last_seq")
    return [
        (pk, created.timestamp(), status not in ACTIVE_STATUSES, last)
        for pk, created, status, last in rows
    ]


class _Tracked:
    __slots__ = ("created", "finished", "seq", "subscriber")

    def __init__(self, created: float, seq: int) -> None:
        self.created = created
        self.seq = seq
        self.finished = False
        self.subscriber: Subscriber | None = None


class SessionStream:
    """The body of one SSE response following all of a visitor's jobs."""

    def __init__(
        self,
        request: HttpRequest,
        user: Any,
        session_key: str | None,
        only: frozenset[uuid.UUID] | None,
        resume: ResumePoint | None,
    ) -> None:
        self.request = request
        self.user = user
        self.owner_id = user.pk if getattr(user, "is_authenticated", False) else None
        self.session_key = session_key
        self.only = only
        self.resume = resume
        self.jobs: dict[uuid.UUID, _Tracked] = {}
        self.horizon = 0
        self.wakeup = Wakeup()
        self.sent = 0
        self.reason = "client went away"

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

    async def _discover(self, first: bool) -> list[uuid.UUID]:
        """Track the jobs this stream does not follow yet; returns them."""
        now = int(time.time())
        if not first:
            since, refs_wanted = self.horizon - MARGIN_SECONDS, list[str]()
        elif self.resume is None:
            # Recent finished jobs too, as already known: a later look for new jobs (which
            # goes back MARGIN_SECONDS) must not mistake them for new ones.
            since, refs_wanted = now - MARGIN_SECONDS, list[str]()
        else:
            since = self.resume.horizon - MARGIN_SECONDS
            refs_wanted = list(self.resume.positions)
        rows = await run_in_db_thread(
            find_jobs,
            self.owner_id,
            self.session_key,
            self.only,
            created_since=since,
            running=first,
            refs=refs_wanted,
        )
        found: list[uuid.UUID] = []
        refs = [job_ref(pk) for pk, *_ in rows]
        for pk, created, finished, last in rows:
            if pk in self.jobs:
                continue
            seq = self._starting_seq(pk, created, finished, last, refs) if first else 0
            if seq is None:
                continue
            tracked = self.jobs[pk] = _Tracked(created, seq)
            tracked.finished = finished and seq >= last
            if not finished:
                tracked.subscriber = await get_hub().subscribe(pk, self.wakeup)
            found.append(pk)
        self.horizon = max(self.horizon, now)
        return found

    def _starting_seq(
        self, pk: uuid.UUID, created: float, finished: bool, last: int, refs: list[str]
    ) -> int | None:
        """Where a newly found job starts: after what the browser has, or at the beginning;
        None for a job the browser already has in full."""
        if self.resume is None:
            # A first connection: running jobs from their beginning; finished ones count as
            # known and are not sent.
            return last if finished else 0
        ref = job_ref(pk)
        if ref in self.resume.positions:
            if refs.count(ref) == 1:
                return self.resume.positions[ref]
            # Two jobs share the 8 digits: which one the position is of is unknown. From the
            # start (the client drops what it has) rather than risk skipping an end.
            return 0
        if not finished or created >= self.resume.horizon - MARGIN_SECONDS:
            return 0
        return None  # finished before the browser's horizon and not listed: sent in full

    # -- the body --------------------------------------------------------------------------

    async def _replay(self, job_ids: Iterable[uuid.UUID]) -> AsyncIterator[bytes]:
        for job_id in job_ids:
            tracked = self.jobs[job_id]
            async for chunk in self._read(job_id, tracked):
                yield chunk

    async def _read(
        self, job_id: uuid.UUID, tracked: _Tracked, upto: int | None = None
    ) -> AsyncIterator[bytes]:
        page = conf.REPLAY_PAGE_SIZE
        while not tracked.finished:
            events = await run_in_db_thread(
                fetch_events, job_id, tracked.seq, upto=upto, limit=page
            )
            if events:
                yield b"".join(self._encode(job_id, e) for e in events if e.seq > tracked.seq)
            if len(events) < page:
                return

    def body(self) -> AsyncIterator[bytes]:
        """The response's body; behind ``DirectWriteMiddleware`` it leaves Django's response
        loop once the stream has caught up (``asgi.Body``)."""
        return stream_body(self.events)

    async def events(self, sink: Sink | None = None) -> AsyncIterator[bytes]:
        opened = time.monotonic()
        await release_request_thread()
        self.request.resolver_match = None  # of no more use, and kept as long as the stream
        user = describe_user(self.user)
        logger.info("Session stream opened: user=%s", user)
        try:
            retry = encode_retry(conf.RETRY_MILLISECONDS)
            if sink is not None:
                sink.expect(retry)
            yield retry
            async for chunk in self._replay(await self._discover(first=True)):
                yield chunk
            if sink is not None and sink.verified:
                # Everything Django was given is sent: let the middleware take over.
                yield DETACH
            async for chunk in self._live():
                yield chunk
        except DatabaseError as exc:
            self.reason = f"database error ({exc.__class__.__name__})"
            logger.warning("Session stream of user %s ends on a database error: %r", user, exc)
        finally:
            hub = get_hub()
            for tracked in self.jobs.values():
                if tracked.subscriber is not None:
                    hub.unsubscribe(tracked.subscriber)
            logger.info(
                "Session stream closed: user=%s jobs=%d events=%d duration=%.1fs reason=%s",
                user,
                len(self.jobs),
                self.sent,
                time.monotonic() - opened,
                self.reason,
            )

    async def _live(self) -> AsyncIterator[bytes]:
        heartbeat, poll = conf.HEARTBEAT_SECONDS, conf.POLL_SECONDS
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_beat, next_look = now + heartbeat, now + poll
        # One timer for the next poll or heartbeat, not a wait_for() (a task and a timer) per
        # wakeup; it is re-armed only once it has fired.
        deadline = min(next_beat, next_look)
        timer = loop.call_at(deadline, self.wakeup.set)
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                chunk = await self._drain()
                if chunk:
                    yield chunk
                now = loop.time()
                if now >= next_look:
                    next_look = now + poll
                    async for chunk in self._replay(await self._discover(first=False)):
                        yield chunk
                if now >= next_beat:
                    still = await run_in_db_thread(same_identity, self.user, self.session_key)
                    if not still:
                        self.reason = "access revoked"
                        return
                    yield HEARTBEAT
                    next_beat = loop.time() + heartbeat
                if now >= deadline:
                    deadline = min(next_beat, next_look)
                    timer = loop.call_at(deadline, self.wakeup.set)
        finally:
            timer.cancel()

    async def _drain(self) -> bytes:
        """The live events waiting in the hub's queues, gaps filled from the database."""
        parts: list[bytes] = []
        for job_id, tracked in list(self.jobs.items()):
            subscriber = tracked.subscriber
            while subscriber is not None and subscriber.items and not tracked.finished:
                event = subscriber.items.popleft().event
                if event.seq <= tracked.seq:
                    continue
                if event.seq > tracked.seq + 1:
                    async for missing in self._read(job_id, tracked, upto=event.seq - 1):
                        parts.append(missing)
                parts.append(self._encode(job_id, event))
            if tracked.finished and subscriber is not None:
                get_hub().unsubscribe(subscriber)
                tracked.subscriber = None
        return b"".join(parts)


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

"""Finding a visitor's jobs for their all-jobs streams: those to follow when a stream opens
(``find_jobs``), and those started after it opened, for every such stream of the process with
one query.

Each open ``SessionStream`` registers here under its visitor: a user id, or the hashes an
anonymous session's jobs carry (``identity.py``). Every ``POLL_SECONDS`` one query asks for the
jobs of all registered visitors that were created or finished recently, and hands each stream
its visitor's rows (a stream ignores the jobs it already follows). A thousand open streams cost
one query per poll, not a thousand; past ``_IN_CHUNK`` visitors the query is split.

"Recently" reaches ``MARGIN_SECONDS`` before the oldest stream's last look, so a job whose
transaction committed late is still found.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db.models import Q

from django_sse.conf import conf
from django_sse.database import primary, run_in_db_thread
from django_sse.identity import Identity
from django_sse.lifecycle import ACTIVE_STATUSES
from django_sse.models import Job
from django_sse.resume import MARGIN_SECONDS

if TYPE_CHECKING:
    from django_sse.session_stream import SessionStream

logger = logging.getLogger("django_sse")

# Visitors per query (users and session hashes each): under every backend's parameter limit.
_IN_CHUNK = 400


class JobRow(NamedTuple):
    pk: uuid.UUID
    owner_id: Any
    session_hash: str
    created: float  # Unix time
    finished: bool
    last_seq: int


def find_jobs(
    identity: Identity,
    only: frozenset[uuid.UUID] | None,
    *,
    created_since: float | None,
    running: bool = False,
    refs: Iterable[str] = (),
) -> list[JobRow]:
    """The visitor's jobs that were created (or finished) since a time, are still running, or
    whose id starts with one of ``refs``. Runs on the stream database thread."""
    jobs = Job.objects.db_manager(primary(Job))
    if identity.user_id is not None:
        jobs = jobs.filter(owner_id=identity.user_id)
    else:
        jobs = jobs.for_session_key(identity.session_key)
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
    rows = jobs.filter(wanted).values_list(
        "pk", "owner_id", "session_hash", "created_at", "status", "last_seq"
    )
    return [
        JobRow(pk, owner, shash, created.timestamp(), status not in ACTIVE_STATUSES, last)
        for pk, owner, shash, created, status, last in rows
    ]


def find_recent_jobs(owner_ids: list[Any], session_hashes: list[str], since: float) -> list[JobRow]:
    """Jobs of these users or anonymous sessions created or finished since ``since`` (a Unix
    time). Runs on the stream database thread."""
    when = datetime.fromtimestamp(since, tz=timezone.utc)
    recent = Q(created_at__gte=when) | Q(finished_at__gte=when)
    jobs = Job.objects.db_manager(primary(Job))
    rows: list[JobRow] = []
    for start in range(0, max(len(owner_ids), len(session_hashes)), _IN_CHUNK):
        owners = owner_ids[start : start + _IN_CHUNK]
        hashes = session_hashes[start : start + _IN_CHUNK]
        whose = Q(owner_id__in=owners) | Q(owner__isnull=True, session_hash__in=hashes)
        found = jobs.filter(whose, recent).values_list(
            "pk", "owner_id", "session_hash", "created_at", "status", "last_seq"
        )
        rows.extend(
            JobRow(pk, owner, shash, created.timestamp(), status not in ACTIVE_STATUSES, last)
            for pk, owner, shash, created, status, last in found
        )
    return rows


class Discovery:
    """The registered all-jobs streams of one event loop and the task that looks for their
    new jobs."""

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]) -> None:
        self._spawn = spawn
        self._by_user: dict[Any, set[SessionStream]] = {}
        self._by_hash: dict[str, set[SessionStream]] = {}
        self._task: asyncio.Task[None] | None = None
        self.queries = 0  # for tests and the curious

    def add(self, stream: SessionStream) -> None:
        for index, key in self._keys(stream):
            index.setdefault(key, set()).add(stream)
        if self._task is None or self._task.done():
            self._task = self._spawn(self._run())

    def remove(self, stream: SessionStream) -> None:
        for index, key in self._keys(stream):
            streams = index.get(key)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del index[key]

    def _keys(self, stream: SessionStream) -> list[tuple[dict[Any, set[SessionStream]], Any]]:
        if stream.identity.user_id is not None:
            return [(self._by_user, stream.identity.user_id)]
        return [(self._by_hash, h) for h in stream.session_hashes]

    def _streams(self) -> set[SessionStream]:
        every: set[SessionStream] = set()
        for streams in (*self._by_user.values(), *self._by_hash.values()):
            every |= streams
        return every

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(conf.POLL_SECONDS)
            streams = self._streams()
            if not streams:
                continue
            now = time.time()
            since = min(stream.horizon for stream in streams) - MARGIN_SECONDS
            try:
                self.queries += 1
                rows = await run_in_db_thread(
                    find_recent_jobs, list(self._by_user), list(self._by_hash), since
                )
            except Exception as exc:
                if not failing:
                    logger.warning("Looking for new jobs in the database failed: %r", exc)
                failing = True
                continue
            if failing:
                logger.info("Looking for new jobs in the database works again.")
                failing = False
            found: dict[SessionStream, list[JobRow]] = {}
            for row in rows:
                if row.owner_id is not None:
                    owners = self._by_user.get(row.owner_id, ())
                else:
                    owners = self._by_hash.get(row.session_hash, ())
                for stream in owners:
                    found.setdefault(stream, []).append(row)
            for stream in streams:
                stream.discovered(found.get(stream, []), now)

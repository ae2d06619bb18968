"""The queries streams run (always on the stream database thread, see ``database.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import NamedTuple

from django.db import router
from django.db.models import Model

from django_sse.validation import dump_data

# Larger IN lists are split, to stay under every backend's parameter limit.
_IN_CHUNK = 500


def primary(model: type[Model]) -> str:
    """The database events are written to. Streams read there too: a lagging replica could
    show event n + 1 without event n."""
    return router.db_for_write(model)


class StoredEvent(NamedTuple):
    seq: int
    type: str
    data: str  # JSON text


def fetch_events(
    job_id: uuid.UUID, after: int, *, upto: int | None = None, limit: int = 500
) -> list[StoredEvent]:
    """Events of ``job_id`` with ``after < seq <= upto``, oldest first, at most ``limit``."""
    from django_sse.models import JobEvent

    qs = JobEvent.objects.db_manager(primary(JobEvent)).filter(job_id=job_id, seq__gt=after)
    if upto is not None:
        qs = qs.filter(seq__lte=upto)
    # (Selecting data::text instead measured twice as slow on PostgreSQL 15 here.)
    rows = qs.order_by("seq").values_list("seq", "type", "data")[:limit]
    return [StoredEvent(seq, type_, dump_data(data)) for seq, type_, data in rows]


def last_seqs(job_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
    """The newest ``seq`` of each job that still exists."""
    from django_sse.models import Job

    ids = list(job_ids)
    found: dict[uuid.UUID, int] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        rows = Job.objects.db_manager(primary(Job)).filter(pk__in=chunk)
        found.update(rows.values_list("pk", "last_seq"))
    return found


def last_seq(job_id: uuid.UUID) -> int:
    return last_seqs([job_id]).get(job_id, 0)

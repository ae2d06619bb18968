"""Recording events: the one place that allocates sequence numbers.

Each write runs in one transaction that first bumps ``Job.last_seq`` with an ``UPDATE``. That
statement takes the job's row lock (PostgreSQL, MySQL) or the database write lock (SQLite) and
holds it until commit, so a second publisher to the same job waits, allocates the next number
and commits after the first: events of a job are committed in ``seq`` order, with no gaps.

Models are imported inside functions: ``django_sse`` re-exports ``publish`` and is imported
before the app registry is ready.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import router, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from django_sse.cancellation import cancel_check
from django_sse.conf import conf
from django_sse.exceptions import JobFinished
from django_sse.throttle import Progress, progress_throttle
from django_sse.validation import (
    MESSAGE_MAX_LENGTH,
    TERMINAL_TYPES,
    encode_data,
    validate_event_type,
)

__all__ = ["Entry", "apublish", "encode_data", "publish", "record"]

if TYPE_CHECKING:
    from django_sse.models import Job, JobEvent


@dataclass(slots=True)
class Entry:
    """One event to record, with the job fields it changes."""

    type: str
    data: Any
    updates: dict[str, Any] = field(default_factory=dict)


def job_id_of(job: Job | uuid.UUID | str) -> uuid.UUID:
    # On the path of every set_progress call: no import, cheapest checks first.
    if isinstance(job, uuid.UUID):
        return job
    if not isinstance(job, str):
        pk = job.pk
        if isinstance(pk, uuid.UUID):
            return pk
    try:
        return uuid.UUID(str(job))
    except ValueError:
        from django_sse.models import Job

        raise Job.DoesNotExist(f"{job!r} is not a job id (a UUID).") from None


def progress_entry(progress: Progress) -> Entry:
    from django_sse.models import JobStatus

    data = {"current": progress.current, "total": progress.total, "message": progress.message}
    updates = {
        "current": progress.current,
        "total": progress.total,
        "message": progress.message,
        # Progress on a pending job means it runs, without a separate "started" event.
        "status": Case(
            When(status=JobStatus.PENDING, then=Value(JobStatus.RUNNING)), default=F("status")
        ),
    }
    return Entry("progress", data, updates)


def record(job: Job | uuid.UUID | str, entries: Sequence[Entry]) -> list[JobEvent]:
    """Write ``entries`` as consecutive events of ``job`` in one transaction.

    Progress coalesced for this job and not yet written goes first, so no later event overtakes
    it. Raises ``JobFinished`` if the job has ended and ``Job.DoesNotExist`` if it is gone.
    """
    from django_sse.models import ACTIVE_STATUSES, Job, JobEvent, JobStatus

    job_id = job_id_of(job)
    using = router.db_for_write(JobEvent)
    # Inside the caller's transaction the pending value is only dropped once that transaction
    # commits: if it rolls back, the value is still pending for the next write.
    in_outer_atomic = transaction.get_connection(using).in_atomic_block
    if in_outer_atomic:
        pending = progress_throttle.peek_pending(job_id)
    else:
        pending = progress_throttle.take_pending(job_id)
    all_entries = [progress_entry(pending), *entries] if pending else list(entries)
    if not all_entries:
        return []
    updates: dict[str, Any] = {}
    for entry in all_entries:
        updates.update(entry.updates)
    now = timezone.now()
    try:
        with transaction.atomic(using=using):
            changed = Job.objects.filter(pk=job_id, status__in=ACTIVE_STATUSES).update(
                last_seq=F("last_seq") + len(all_entries), updated_at=now, **updates
            )
            if not changed:
                status = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
                if status is None:
                    raise Job.DoesNotExist(f"Job {job_id} does not exist.")
                raise JobFinished(f"Job {job_id} has {status}; it takes no more events.")
            last_seq, status = Job.objects.filter(pk=job_id).values_list("last_seq", "status").get()
            first_seq = last_seq - len(all_entries) + 1
            # One INSERT per event (not bulk_create) so that post_save fires for each.
            events = [
                JobEvent.objects.create(job_id=job_id, seq=first_seq + i, type=e.type, data=e.data)
                for i, e in enumerate(all_entries)
            ]
    except BaseException:
        if pending and not in_outer_atomic:
            progress_throttle.restore_pending(job_id, pending)
        raise
    if pending and in_outer_atomic:
        transaction.on_commit(
            functools.partial(progress_throttle.discard_pending, job_id, pending), using=using
        )
    if any(e.type in TERMINAL_TYPES for e in all_entries):
        progress_throttle.forget(job_id)
        cancel_check.forget(job_id)
    if isinstance(job, Job):
        for name, value in updates.items():
            if not hasattr(value, "resolve_expression"):
                setattr(job, name, value)
        job.status = JobStatus(status)
        job.last_seq = last_seq
        job.updated_at = now
    return events


def publish(job: Job | uuid.UUID | str, event: str, data: Any = None) -> JobEvent:
    """Record an event of type ``event`` for ``job`` and return it.

    The event reaches open streams once the surrounding transaction commits. Raises
    ``InvalidEventType``, ``EventDataNotSerializable``, ``EventDataTooLarge``, ``JobFinished``
    or ``Job.DoesNotExist``; in every case nothing is stored.
    """
    validate_event_type(event)
    stored, _text = encode_data(data)
    return record(job, [Entry(event, stored)])[-1]


async def apublish(job: Job | uuid.UUID | str, event: str, data: Any = None) -> JobEvent:
    """Async twin of :func:`publish`; input is checked before any thread is used."""
    validate_event_type(event)
    stored, _text = encode_data(data)
    events = await sync_to_async(record)(job, [Entry(event, stored)])
    return events[-1]


def set_progress(
    job: Job | uuid.UUID | str, current: int, total: int | None = None, message: str = ""
) -> JobEvent | None:
    """Record progress, coalescing updates closer together than the progress interval.

    Returns the event written, or None when the value was kept pending.
    """
    progress = make_progress(current, total, message)
    job_id = job_id_of(job)
    if not progress_throttle.offer(job_id, progress, conf.PROGRESS_INTERVAL_SECONDS):
        return None
    return record(job, [progress_entry(progress)])[-1]


async def aset_progress(
    job: Job | uuid.UUID | str, current: int, total: int | None = None, message: str = ""
) -> JobEvent | None:
    progress = make_progress(current, total, message)
    job_id = job_id_of(job)
    if not progress_throttle.offer(job_id, progress, conf.PROGRESS_INTERVAL_SECONDS):
        return None
    events = await sync_to_async(record)(job, [progress_entry(progress)])
    return events[-1]


def flush_progress(job: Job | uuid.UUID | str) -> JobEvent | None:
    """Write progress that is still pending for ``job``, if any."""
    if progress_throttle.peek_pending(job_id_of(job)) is None:
        return None
    events = record(job, [])
    return events[-1] if events else None


def _is_count(value: object) -> bool:
    # ``type(...) is int`` first: the common case, and it turns bools away.
    return (type(value) is int or (isinstance(value, int) and not isinstance(value, bool))) and (
        value >= 0
    )


def make_progress(current: int, total: int | None, message: str) -> Progress:
    if not _is_count(current):
        raise ValueError(f"Progress 'current' must be a non-negative integer, not {current!r}.")
    if total is not None and not _is_count(total):
        raise ValueError(f"Progress 'total' must be a non-negative integer or None, not {total!r}.")
    if not isinstance(message, str) or len(message) > MESSAGE_MAX_LENGTH:
        raise ValueError(
            f"Progress 'message' must be a string of at most {MESSAGE_MAX_LENGTH} characters."
        )
    return Progress(current, total, message)


def terminal_entry(event: str, data: Any, updates: dict[str, Any]) -> Entry:
    from django_sse.models import JobStatus

    stored, _text = encode_data(data)
    return Entry(
        event, stored, {**updates, "status": JobStatus(event), "finished_at": timezone.now()}
    )

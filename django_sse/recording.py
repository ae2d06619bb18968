"""Recording events: the first stage of an event's way to the browser, and the one place that
allocates sequence numbers.

``JobEvent.objects.record(job, entries)`` writes a batch of events in one transaction that first
bumps ``Job.last_seq`` with an ``UPDATE`` (``fastpaths/sql.py`` holds the write itself). That
statement takes the job's row lock (PostgreSQL, MySQL) or the database write lock (SQLite) and
holds it until commit, so a second publisher to the same job waits, allocates the next number
and commits after the first: events of a job are committed in ``seq`` order, with no gaps.
This is the one place that guarantees the order; readers of the database rely on it.

Once the transaction commits, the batch goes on to the channel layer (``pushing.py``): one
``transaction.on_commit`` callback per batch, so an event of a rolled-back transaction is never
pushed, and one recorded inside ``atomic()`` only after the outermost block commits. No signal
is involved.

Nothing here imports ``models.py``: the manager reaches its models through ``self.model``, so
``models.py`` can import this module.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import sync_to_async
from django.db import models, router, transaction
from django.utils import timezone

from django_sse import metrics, pushing
from django_sse.cancellation import cancel_check
from django_sse.conf import conf
from django_sse.exceptions import JobFinished
from django_sse.fastpaths.sql import write_events
from django_sse.jsontext import encode_data
from django_sse.lifecycle import MESSAGE_MAX_LENGTH, TERMINAL_TYPES, JobStatus
from django_sse.throttle import Progress, progress_throttle

if TYPE_CHECKING:
    from django_sse.models import Job, JobEvent


@dataclass(slots=True)
class Entry:
    """One event to record, with the job fields it changes."""

    type: str
    data: Any
    updates: dict[str, Any] = field(default_factory=dict)


def job_id_of(job: Job | uuid.UUID | str, jobs: type[Job]) -> uuid.UUID:
    """The id of ``job`` (a job of model ``jobs``, or its id); ``jobs.DoesNotExist`` if it is
    not one."""
    # On the path of every set_progress call: cheapest checks first.
    if isinstance(job, uuid.UUID):
        return job
    if not isinstance(job, str):
        pk = job.pk
        if isinstance(pk, uuid.UUID):
            return pk
    try:
        return uuid.UUID(str(job))
    except ValueError:
        raise jobs.DoesNotExist(f"{job!r} is not a job id (a UUID).") from None


def _is_count(value: object) -> bool:
    # ``type(...) is int`` first: the common case, and it turns bools away.
    return (type(value) is int or (isinstance(value, int) and not isinstance(value, bool))) and (
        value >= 0
    )


def make_progress(current: int, total: int | None, message: str) -> Progress:
    """The progress to record, or ``ValueError`` (the checks of ``set_progress``)."""
    if not _is_count(current):
        raise ValueError(f"Progress 'current' must be a non-negative integer, not {current!r}.")
    if total is not None and not _is_count(total):
        raise ValueError(f"Progress 'total' must be a non-negative integer or None, not {total!r}.")
    if not isinstance(message, str) or len(message) > MESSAGE_MAX_LENGTH:
        raise ValueError(
            f"Progress 'message' must be a string of at most {MESSAGE_MAX_LENGTH} characters."
        )
    return Progress(current, total, message)


def progress_entry(progress: Progress) -> Entry:
    data = {"current": progress.current, "total": progress.total, "message": progress.message}
    updates = {
        "current": progress.current,
        "total": progress.total,
        "message": progress.message,
        # Progress on a pending job means it runs, without a separate "started" event. The
        # UPDATE only touches a pending or running job, so "running" is right for both.
        "status": JobStatus.RUNNING,
    }
    return Entry("progress", data, updates)


def terminal_entry(event: str, data: Any, updates: dict[str, Any]) -> Entry:
    stored, _text = encode_data(data)
    return Entry(
        event, stored, {**updates, "status": JobStatus(event), "finished_at": timezone.now()}
    )


class EventManager(models.Manager["JobEvent"]):
    """``JobEvent.objects``: the ORM's manager, and the one writer of events.

    ``record`` checks neither the event types nor the data: its callers do, and it is not
    public API. ``publish()`` validates both, the lifecycle methods of ``Job`` write only their
    own types with encoded data.
    """

    @functools.cached_property
    def _jobs(self) -> type[Job]:
        # Looked up once: set_progress() reads it on every call.
        return cast("type[Job]", self.model._meta.get_field("job").related_model)

    @metrics.timed_publish
    def record(self, job: Job | uuid.UUID | str, entries: Sequence[Entry]) -> list[JobEvent]:
        """Write ``entries`` as consecutive events of ``job`` in one transaction and push them
        to the channel layer once it commits.

        Progress coalesced for this job and not yet written goes first, so no later event
        overtakes it. Raises ``JobFinished`` if the job has ended and ``Job.DoesNotExist`` if
        it is gone.
        """
        jobs = self._jobs
        job_id = job_id_of(job, jobs)
        using = router.db_for_write(self.model)
        connection = transaction.get_connection(using)
        # Autocommit turned off (Django's manual transaction management) is a transaction of the
        # caller's too, one on_commit() refuses outside an atomic block: the write then gets a
        # block of its own (a savepoint), inside which the callbacks wait for the caller's commit.
        manual = not connection.get_autocommit() and not connection.in_atomic_block
        # Inside the caller's transaction the pending value is only dropped once that
        # transaction commits: if it rolls back, the value is still pending for the next write.
        in_outer_transaction = connection.in_atomic_block or manual
        if in_outer_transaction:
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
        events = [self.model(job_id=job_id, type=e.type, data=e.data) for e in all_entries]
        try:
            with transaction.atomic(using=using) if manual else contextlib.nullcontext():
                written = write_events(using, jobs, job_id, updates, now, events)
                if written is None:
                    status = (
                        jobs.objects.db_manager(using)
                        .filter(pk=job_id)
                        .values_list("status", flat=True)
                    ).first()
                    if status is None:
                        raise jobs.DoesNotExist(f"Job {job_id} does not exist.")
                    raise JobFinished(f"Job {job_id} has {status}; it takes no more events.")
                transaction.on_commit(
                    functools.partial(pushing.push_events, events), using=using, robust=True
                )
                if pending and in_outer_transaction:
                    transaction.on_commit(
                        functools.partial(progress_throttle.discard_pending, job_id, pending),
                        using=using,
                    )
        except BaseException:
            if pending and not in_outer_transaction:
                progress_throttle.restore_pending(job_id, pending)
            raise
        last_seq, status = written
        if any(e.type in TERMINAL_TYPES for e in all_entries):
            progress_throttle.forget(job_id)
            cancel_check.forget(job_id)
        if isinstance(job, jobs):
            for name, value in updates.items():
                if not hasattr(value, "resolve_expression"):
                    setattr(job, name, value)
            job.status = JobStatus(status)
            job.last_seq = last_seq
            job.updated_at = now
        return events

    def record_progress(
        self, job: Job | uuid.UUID | str, current: int, total: int | None, message: str
    ) -> JobEvent | None:
        """Record progress, coalescing updates closer together than the progress interval;
        None when the value was kept pending."""
        progress = make_progress(current, total, message)
        job_id = job_id_of(job, self._jobs)
        if not progress_throttle.offer(job_id, progress, conf.PROGRESS_INTERVAL_SECONDS):
            return None
        return self.record(job, [progress_entry(progress)])[-1]

    async def arecord_progress(
        self, job: Job | uuid.UUID | str, current: int, total: int | None, message: str
    ) -> JobEvent | None:
        """Async twin of :meth:`record_progress`: a coalesced value uses no thread."""
        progress = make_progress(current, total, message)
        job_id = job_id_of(job, self._jobs)
        if not progress_throttle.offer(job_id, progress, conf.PROGRESS_INTERVAL_SECONDS):
            return None
        events = await sync_to_async(self.record)(job, [progress_entry(progress)])
        return events[-1]

    def flush_progress(self, job: Job | uuid.UUID | str) -> JobEvent | None:
        """Write progress that is still pending for ``job``, if any."""
        if progress_throttle.peek_pending(job_id_of(job, self._jobs)) is None:
            return None
        events = self.record(job, [])
        return events[-1] if events else None

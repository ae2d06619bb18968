"""Recording events: the one place that allocates sequence numbers.

Each write runs in one transaction that first bumps ``Job.last_seq`` with an ``UPDATE``. That
statement takes the job's row lock (PostgreSQL, MySQL) or the database write lock (SQLite) and
holds it until commit, so a second publisher to the same job waits, allocates the next number
and commits after the first: events of a job are committed in ``seq`` order, with no gaps.

The round trips of a publish (see ``write_events``): on PostgreSQL one statement, the ``UPDATE``
and the ``INSERT`` in a data-modifying ``WITH`` (outside a transaction it commits on its own);
on SQLite 3.35+ BEGIN, ``UPDATE ... RETURNING``, one ``INSERT`` for every event, COMMIT; on
other databases through the ORM, with a ``SELECT`` of the new ``last_seq`` and an ``INSERT`` per
event.

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
from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F
from django.db.models.signals import post_save
from django.utils import timezone

from django_sse import metrics
from django_sse.cancellation import cancel_check
from django_sse.conf import conf
from django_sse.exceptions import JobFinished
from django_sse.fastpaths.sqltext import model_field
from django_sse.jsontext import encode_data
from django_sse.lifecycle import (
    ACTIVE_STATUSES,
    MESSAGE_MAX_LENGTH,
    TERMINAL_TYPES,
    JobStatus,
    validate_event_type,
)
from django_sse.throttle import Progress, progress_throttle

__all__ = ["apublish", "encode_data", "publish"]

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


def _plain(updates: dict[str, Any]) -> bool:
    return not any(hasattr(value, "resolve_expression") for value in updates.values())


def can_update_returning(connection: BaseDatabaseWrapper) -> bool:
    """Whether ``UPDATE ... RETURNING`` works here: PostgreSQL, SQLite 3.35+ (the version that
    also brought ``INSERT ... RETURNING``). MySQL and MariaDB have no ``UPDATE ... RETURNING``."""
    return connection.vendor in ("postgresql", "sqlite") and bool(
        connection.features.can_return_columns_from_insert
    )


def _update_sql(
    connection: BaseDatabaseWrapper,
    job_id: uuid.UUID,
    count: int,
    now: Any,
    updates: dict[str, Any],
) -> tuple[str, list[Any]]:
    """``UPDATE`` of the active job ``job_id`` that adds ``count`` to ``last_seq``, applies
    ``updates`` (plain values) and returns ``last_seq, status``."""
    from django_sse.models import Job

    qn = connection.ops.quote_name
    pk_field, pk = model_field(Job, "id")
    last_seq = qn(model_field(Job, "last_seq")[1])
    status = qn(model_field(Job, "status")[1])
    assignments = [f"{last_seq} = {last_seq} + %s"]
    params: list[Any] = [count]
    # What the ORM's UPDATE compiler does with plain values, without building a query.
    for name, value in {"updated_at": now, **updates}.items():
        target, column = model_field(Job, name)
        assignments.append(f"{qn(column)} = %s")
        params.append(target.get_db_prep_save(value, connection))
    active = sorted(ACTIVE_STATUSES)
    params.append(pk_field.get_db_prep_value(job_id, connection))
    params.extend(active)
    sql = (
        f"UPDATE {qn(Job._meta.db_table)} SET {', '.join(assignments)} "
        f"WHERE {qn(pk)} = %s AND {status} IN ({', '.join(['%s'] * len(active))}) "
        f"RETURNING {last_seq}, {status}"
    )
    return sql, params


def _insert_sql(
    connection: BaseDatabaseWrapper, objs: list[JobEvent], seq_sql: Sequence[str] | None = None
) -> tuple[str, list[str], list[Any]]:
    """For an ``INSERT`` of ``objs``: the column list, the values of each event as SQL and the
    params, as the ORM's INSERT compiler makes them (``pre_save`` fills ``created_at``).

    With ``seq_sql`` (an ``INSERT ... SELECT``), the ``seq`` of event i is the SQL
    ``seq_sql[i]``, and every param is cast to its column's type: a ``UNION`` of untyped values
    (NULL data in every row) would otherwise come out as text.
    """
    from django_sse.models import JobEvent

    opts = JobEvent._meta
    qn = connection.ops.quote_name
    fields = [f for f in opts.concrete_fields if f is not opts.pk]
    columns = ", ".join(qn(model_field(JobEvent, f.name)[1]) for f in fields)
    placeholders = [
        "%s" if seq_sql is None else f"CAST(%s AS {f.cast_db_type(connection)})" for f in fields
    ]
    rows: list[str] = []
    params: list[Any] = []
    for i, obj in enumerate(objs):
        items = []
        for f, placeholder in zip(fields, placeholders, strict=True):
            if seq_sql is not None and f.attname == "seq":
                items.append(seq_sql[i])
            else:
                items.append(placeholder)
                params.append(f.get_db_prep_save(f.pre_save(obj, True), connection))
        rows.append(", ".join(items))
    return columns, rows, params


def _mark_saved(using: str, objs: list[JobEvent], returned: Sequence[Sequence[Any]]) -> None:
    """Give ``objs`` the primary keys an ``INSERT ... RETURNING pk, seq`` returned and send
    ``post_save`` for each (after the insert, as ``save()`` does; ``pre_save`` is not sent, as
    with ``bulk_create()``). The delivery to streams hangs on ``post_save``."""
    from django_sse.models import JobEvent

    pks = {int(row[1]): row[0] for row in returned}
    for obj in objs:
        obj.pk = pks[obj.seq]
        obj._state.adding = False
        obj._state.db = using
    for obj in objs:
        post_save.send(
            sender=JobEvent, instance=obj, created=True, update_fields=None, raw=False, using=using
        )


def _write_one_statement(
    using: str, job_id: uuid.UUID, entries: Sequence[Entry], now: Any, updates: dict[str, Any]
) -> tuple[list[JobEvent], int, str] | None:
    """PostgreSQL: the ``UPDATE`` and the ``INSERT`` as one statement (a data-modifying
    ``WITH``); the ``INSERT`` takes its numbers from the row the ``UPDATE`` returns."""
    from django_sse.models import Job, JobEvent

    connection = connections[using]
    qn = connection.ops.quote_name
    count = len(entries)
    update_sql, params = _update_sql(connection, job_id, count, now, updates)
    last_seq = qn(model_field(Job, "last_seq")[1])
    status = qn(model_field(Job, "status")[1])
    objs = [JobEvent(job_id=job_id, type=e.type, data=e.data) for e in entries]
    seq_sql = [f"bumped.{last_seq} - {count - 1 - i}" for i in range(count)]
    columns, rows, insert_params = _insert_sql(connection, objs, seq_sql)
    sql = (
        f"WITH bumped AS ({update_sql}) "
        f"INSERT INTO {qn(JobEvent._meta.db_table)} ({columns}) "
        + " UNION ALL ".join(f"SELECT {row} FROM bumped" for row in rows)
        + f" RETURNING {qn(model_field(JobEvent, 'id')[1])}, {qn(model_field(JobEvent, 'seq')[1])}"
        f", (SELECT {last_seq} FROM bumped), (SELECT {status} FROM bumped)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params + insert_params)
        returned = cursor.fetchall()
    if not returned:
        return None
    new_seq, new_status = int(returned[0][2]), str(returned[0][3])
    for i, obj in enumerate(objs):
        obj.seq = new_seq - count + 1 + i
    _mark_saved(using, objs, returned)
    return objs, new_seq, new_status


def _write_returning(
    using: str, job_id: uuid.UUID, entries: Sequence[Entry], now: Any, updates: dict[str, Any]
) -> tuple[list[JobEvent], int, str] | None:
    """SQLite 3.35+: ``UPDATE ... RETURNING``, then one ``INSERT ... RETURNING`` for every
    event. Call it inside a transaction."""
    from django_sse.models import JobEvent

    connection = connections[using]
    qn = connection.ops.quote_name
    update_sql, params = _update_sql(connection, job_id, len(entries), now, updates)
    with connection.cursor() as cursor:
        cursor.execute(update_sql, params)
        bumped = cursor.fetchall()
        if not bumped:
            return None
        new_seq, new_status = int(bumped[0][0]), str(bumped[0][1])
        first = new_seq - len(entries) + 1
        objs = [
            JobEvent(job_id=job_id, seq=first + i, type=e.type, data=e.data)
            for i, e in enumerate(entries)
        ]
        columns, rows, insert_params = _insert_sql(connection, objs)
        cursor.execute(
            f"INSERT INTO {qn(JobEvent._meta.db_table)} ({columns}) VALUES "
            + ", ".join(f"({row})" for row in rows)
            + f" RETURNING {qn(model_field(JobEvent, 'id')[1])}, "
            f"{qn(model_field(JobEvent, 'seq')[1])}",
            insert_params,
        )
        returned = cursor.fetchall()
    _mark_saved(using, objs, returned)
    return objs, new_seq, new_status


def _write_orm(
    using: str, job_id: uuid.UUID, entries: Sequence[Entry], now: Any, updates: dict[str, Any]
) -> tuple[list[JobEvent], int, str] | None:
    """Any database: ``UPDATE``, ``SELECT`` of the new ``last_seq``, one ``INSERT`` per event
    (``create()``, so ``pre_save`` and ``post_save``). Call it inside a transaction."""
    from django_sse.models import Job, JobEvent

    jobs = Job.objects.db_manager(using)
    changed = jobs.filter(pk=job_id, status__in=ACTIVE_STATUSES).update(
        last_seq=F("last_seq") + len(entries), updated_at=now, **updates
    )
    if not changed:
        return None
    new_seq, new_status = jobs.filter(pk=job_id).values_list("last_seq", "status").get()
    first = new_seq - len(entries) + 1
    events = JobEvent.objects.db_manager(using)
    objs = [
        events.create(job_id=job_id, seq=first + i, type=e.type, data=e.data)
        for i, e in enumerate(entries)
    ]
    return objs, int(new_seq), str(new_status)


def write_events(
    using: str, job_id: uuid.UUID, entries: Sequence[Entry], now: Any, updates: dict[str, Any]
) -> tuple[list[JobEvent], int, str] | None:
    """Bump the active job's ``last_seq`` by ``len(entries)`` (taking its row lock), apply
    ``updates`` and insert ``entries`` with the numbers allocated, atomically. Returns the
    events, the new ``last_seq`` and the job's status, or None (nothing written) if no active
    job matched.

    PostgreSQL: one statement, a transaction of its own outside one (inside one, in a
    savepoint). SQLite 3.35+: BEGIN, UPDATE ... RETURNING, INSERT, COMMIT. Others: through the
    ORM, with a SELECT for the new ``last_seq`` and one INSERT per event.
    """
    connection = connections[using]
    if _plain(updates) and can_update_returning(connection):
        if connection.vendor == "postgresql":
            if not connection.in_atomic_block and connection.get_autocommit():
                # A statement outside a transaction is one of its own.
                return _write_one_statement(using, job_id, entries, now, updates)
            with transaction.atomic(using=using):
                return _write_one_statement(using, job_id, entries, now, updates)
        with transaction.atomic(using=using):
            return _write_returning(using, job_id, entries, now, updates)
    with transaction.atomic(using=using):
        return _write_orm(using, job_id, entries, now, updates)


@metrics.timed_publish
def _record(job: Job | uuid.UUID | str, entries: Sequence[Entry]) -> list[JobEvent]:
    """Write ``entries`` as consecutive events of ``job`` in one transaction.

    Private: it checks neither the event types nor the data. Its callers do: ``publish()``
    validates both, the lifecycle helpers write only their own types with encoded data.

    Progress coalesced for this job and not yet written goes first, so no later event overtakes
    it. Raises ``JobFinished`` if the job has ended and ``Job.DoesNotExist`` if it is gone.
    """
    from django_sse.models import Job, JobEvent

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
        written = write_events(using, job_id, all_entries, now, updates)
        if written is None:
            status = (
                Job.objects.db_manager(using).filter(pk=job_id).values_list("status", flat=True)
            ).first()
            if status is None:
                raise Job.DoesNotExist(f"Job {job_id} does not exist.")
            raise JobFinished(f"Job {job_id} has {status}; it takes no more events.")
    except BaseException:
        if pending and not in_outer_atomic:
            progress_throttle.restore_pending(job_id, pending)
        raise
    events, last_seq, status = written
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
    return _record(job, [Entry(event, stored)])[-1]


async def apublish(job: Job | uuid.UUID | str, event: str, data: Any = None) -> JobEvent:
    """Async twin of :func:`publish`; input is checked before any thread is used."""
    validate_event_type(event)
    stored, _text = encode_data(data)
    events = await sync_to_async(_record)(job, [Entry(event, stored)])
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
    return _record(job, [progress_entry(progress)])[-1]


async def aset_progress(
    job: Job | uuid.UUID | str, current: int, total: int | None = None, message: str = ""
) -> JobEvent | None:
    progress = make_progress(current, total, message)
    job_id = job_id_of(job)
    if not progress_throttle.offer(job_id, progress, conf.PROGRESS_INTERVAL_SECONDS):
        return None
    events = await sync_to_async(_record)(job, [progress_entry(progress)])
    return events[-1]


def flush_progress(job: Job | uuid.UUID | str) -> JobEvent | None:
    """Write progress that is still pending for ``job``, if any."""
    if progress_throttle.peek_pending(job_id_of(job)) is None:
        return None
    events = _record(job, [])
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
    stored, _text = encode_data(data)
    return Entry(
        event, stored, {**updates, "status": JobStatus(event), "finished_at": timezone.now()}
    )

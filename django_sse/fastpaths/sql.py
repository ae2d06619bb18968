"""The write of a batch of events in hand-written SQL: the fewest round trips a publish can take.

``write_events`` is the one entry point. What the ORM would do, and what this does instead:

- PostgreSQL: one statement, the ``UPDATE`` of the job and the ``INSERT`` of its events in a
  data-modifying ``WITH`` (outside a transaction it commits on its own), the events sent as one
  array per column (``unnest ... WITH ORDINALITY``), so a batch of 1,000 costs about what a
  batch of ten does. The ORM has no such statement: it takes an ``UPDATE``, a ``SELECT`` of the
  new ``last_seq`` and an ``INSERT``.
- SQLite 3.35+: ``UPDATE ... RETURNING`` (the ORM's ``update()`` returns a row count only),
  then one ``INSERT ... RETURNING`` for every event.
- Anything else (MySQL, MariaDB, older SQLite) and any update holding an expression (``F()``):
  the plain ORM route, ``_write_orm``.

What it relies on that Django does not promise as API (checked on Django 5.2; nox runs 6.0):
``Field.get_db_prep_save`` and ``Field.pre_save`` give the values the ORM's INSERT and UPDATE
compilers send (and psycopg adapts a list of them as an array of the column's type);
``Field.cast_db_type`` is the column's type; the connection's
``features.can_return_columns_from_insert`` tells SQLite 3.35+ from older versions; an instance
is marked saved by setting ``_state.adding`` and ``_state.db`` (what ``Model.save_base`` does).
Columns and tables are named through ``sqltext.model_field`` and ``_meta.db_table``, as the ORM
names them.

``tests/test_fastpaths.py`` checks that the hand-written and the ORM route write the same rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F

from django_sse.fastpaths.sqltext import model_field
from django_sse.lifecycle import ACTIVE_STATUSES

if TYPE_CHECKING:
    from django_sse.models import Job, JobEvent

__all__ = ["can_update_returning", "write_events"]


def write_events(
    using: str,
    jobs: type[Job],
    job_id: uuid.UUID,
    updates: dict[str, Any],
    now: Any,
    events: Sequence[JobEvent],
) -> tuple[int, str] | None:
    """Bump the active job's ``last_seq`` by ``len(events)`` (taking its row lock), set
    ``updated_at`` to ``now``, apply ``updates`` and insert ``events`` (unsaved, of job
    ``job_id``) with the numbers allocated, atomically. The events come back saved: their
    ``seq``, primary key and ``created_at`` set. Returns the new ``last_seq`` and the job's
    status, or None (nothing written) if no active job matched.
    """
    connection = connections[using]
    if _plain(updates) and can_update_returning(connection):
        if connection.vendor == "postgresql":
            if not connection.in_atomic_block and connection.get_autocommit():
                # A statement outside a transaction is one of its own.
                return _write_one_statement(using, jobs, job_id, updates, now, events)
            with transaction.atomic(using=using):
                return _write_one_statement(using, jobs, job_id, updates, now, events)
        with transaction.atomic(using=using):
            return _write_returning(using, jobs, job_id, updates, now, events)
    with transaction.atomic(using=using):
        return _write_orm(using, jobs, job_id, updates, now, events)


def _plain(updates: dict[str, Any]) -> bool:
    return not any(hasattr(value, "resolve_expression") for value in updates.values())


def can_update_returning(connection: BaseDatabaseWrapper) -> bool:
    """Whether ``UPDATE ... RETURNING`` works here: PostgreSQL, SQLite 3.35+ (the version that
    also brought ``INSERT ... RETURNING``). MySQL and MariaDB have no ``UPDATE ... RETURNING``."""
    return connection.vendor in ("postgresql", "sqlite") and bool(
        connection.features.can_return_columns_from_insert
    )


def _write_orm(
    using: str,
    jobs: type[Job],
    job_id: uuid.UUID,
    updates: dict[str, Any],
    now: Any,
    events: Sequence[JobEvent],
) -> tuple[int, str] | None:
    """The plain route, any database: ``UPDATE``, ``SELECT`` of the new ``last_seq``, one
    ``save()`` per event (so ``pre_save`` and ``post_save`` are sent). Call it inside a
    transaction."""
    rows = jobs.objects.db_manager(using)
    changed = rows.filter(pk=job_id, status__in=ACTIVE_STATUSES).update(
        last_seq=F("last_seq") + len(events), updated_at=now, **updates
    )
    if not changed:
        return None
    new_seq, new_status = rows.filter(pk=job_id).values_list("last_seq", "status").get()
    first = new_seq - len(events) + 1
    for i, event in enumerate(events):
        event.seq = first + i
        event.save(force_insert=True, using=using)
    return int(new_seq), str(new_status)


def _update_sql(
    connection: BaseDatabaseWrapper,
    jobs: type[Job],
    job_id: uuid.UUID,
    count: int,
    now: Any,
    updates: dict[str, Any],
) -> tuple[str, list[Any]]:
    """``UPDATE`` of the active job ``job_id`` that adds ``count`` to ``last_seq``, applies
    ``updates`` (plain values) and returns ``last_seq, status``."""
    qn = connection.ops.quote_name
    pk_field, pk = model_field(jobs, "id")
    last_seq = qn(model_field(jobs, "last_seq")[1])
    status = qn(model_field(jobs, "status")[1])
    assignments = [f"{last_seq} = {last_seq} + %s"]
    params: list[Any] = [count]
    # What the ORM's UPDATE compiler does with plain values, without building a query.
    for name, value in {"updated_at": now, **updates}.items():
        target, column = model_field(jobs, name)
        assignments.append(f"{qn(column)} = %s")
        params.append(target.get_db_prep_save(value, connection))
    active = sorted(ACTIVE_STATUSES)
    params.append(pk_field.get_db_prep_value(job_id, connection))
    params.extend(active)
    sql = (
        f"UPDATE {qn(jobs._meta.db_table)} SET {', '.join(assignments)} "
        f"WHERE {qn(pk)} = %s AND {status} IN ({', '.join(['%s'] * len(active))}) "
        f"RETURNING {last_seq}, {status}"
    )
    return sql, params


def _insert_sql(
    connection: BaseDatabaseWrapper, events: Sequence[JobEvent]
) -> tuple[str, list[str], list[Any]]:
    """For an ``INSERT`` of ``events``: the column list, the values of each event as SQL and
    the params, as the ORM's INSERT compiler makes them (``pre_save`` fills ``created_at``)."""
    model = type(events[0])
    opts = model._meta
    qn = connection.ops.quote_name
    fields = [f for f in opts.concrete_fields if f is not opts.pk]
    columns = ", ".join(qn(model_field(model, f.name)[1]) for f in fields)
    row = ", ".join(["%s"] * len(fields))
    rows: list[str] = []
    params: list[Any] = []
    for event in events:
        rows.append(row)
        params.extend(f.get_db_prep_save(f.pre_save(event, True), connection) for f in fields)
    return columns, rows, params


def _returning_ids(model: type[JobEvent], connection: BaseDatabaseWrapper) -> str:
    qn = connection.ops.quote_name
    return f"{qn(model_field(model, 'id')[1])}, {qn(model_field(model, 'seq')[1])}"


def _mark_saved(using: str, events: Sequence[JobEvent], returned: Sequence[Sequence[Any]]) -> None:
    """Give ``events`` the primary keys an ``INSERT ... RETURNING pk, seq`` returned and mark
    them saved in ``using``, as ``save()`` does (no signal is sent, as with ``bulk_create()``)."""
    pks = {int(row[1]): row[0] for row in returned}
    for event in events:
        event.pk = pks[event.seq]
        event._state.adding = False
        event._state.db = using


def _write_one_statement(
    using: str,
    jobs: type[Job],
    job_id: uuid.UUID,
    updates: dict[str, Any],
    now: Any,
    events: Sequence[JobEvent],
) -> tuple[int, str] | None:
    """PostgreSQL: the ``UPDATE`` and the ``INSERT`` as one statement (a data-modifying
    ``WITH``); the ``INSERT`` takes its numbers from the row the ``UPDATE`` returns.

    The events go as one array per column, unnested ``WITH ORDINALITY``: each row's position
    ``n`` gives its ``seq`` (``last_seq - count + n``), and rows are inserted in that order.
    The statement's text and its handful of params are the same whatever the batch size. (A
    ``UNION ALL`` of one ``SELECT`` per event took PostgreSQL over a second to plan for 1,000
    events; a ``VALUES`` list with a placeholder per value cost the client more than the
    write.)"""
    connection = connections[using]
    qn = connection.ops.quote_name
    model = type(events[0])
    count = len(events)
    update_sql, params = _update_sql(connection, jobs, job_id, count, now, updates)
    last_seq = qn(model_field(jobs, "last_seq")[1])
    status = qn(model_field(jobs, "status")[1])
    opts = model._meta
    fields = [f for f in opts.concrete_fields if f is not opts.pk and f.attname != "seq"]
    aliases = [f"c{i}" for i in range(len(fields))]
    columns = [qn(model_field(model, f.name)[1]) for f in fields]
    arrays = [[f.get_db_prep_save(f.pre_save(e, True), connection) for e in events] for f in fields]
    unnest = ", ".join(f"CAST(%s AS {f.cast_db_type(connection)}[])" for f in fields)
    sql = (
        f"WITH bumped AS ({update_sql}) "
        f"INSERT INTO {qn(opts.db_table)} ({', '.join(columns)}, "
        f"{qn(model_field(model, 'seq')[1])}) "
        f"SELECT {', '.join(f'v.{a}' for a in aliases)}, bumped.{last_seq} - %s + v.n "
        f"FROM bumped, unnest({unnest}) WITH ORDINALITY AS v({', '.join(aliases)}, n) "
        f"ORDER BY v.n"
        f" RETURNING {_returning_ids(model, connection)}"
        f", (SELECT {last_seq} FROM bumped), (SELECT {status} FROM bumped)"
    )
    insert_params = [count, *arrays]
    with connection.cursor() as cursor:
        cursor.execute(sql, params + insert_params)
        returned = cursor.fetchall()
    if not returned:
        return None
    new_seq, new_status = int(returned[0][2]), str(returned[0][3])
    for i, event in enumerate(events):
        event.seq = new_seq - count + 1 + i
    _mark_saved(using, events, returned)
    return new_seq, new_status


def _write_returning(
    using: str,
    jobs: type[Job],
    job_id: uuid.UUID,
    updates: dict[str, Any],
    now: Any,
    events: Sequence[JobEvent],
) -> tuple[int, str] | None:
    """SQLite 3.35+: ``UPDATE ... RETURNING``, then one ``INSERT ... RETURNING`` for every
    event. Call it inside a transaction."""
    connection = connections[using]
    qn = connection.ops.quote_name
    update_sql, params = _update_sql(connection, jobs, job_id, len(events), now, updates)
    with connection.cursor() as cursor:
        cursor.execute(update_sql, params)
        bumped = cursor.fetchall()
        if not bumped:
            return None
        new_seq, new_status = int(bumped[0][0]), str(bumped[0][1])
        first = new_seq - len(events) + 1
        for i, event in enumerate(events):
            event.seq = first + i
        columns, rows, insert_params = _insert_sql(connection, events)
        cursor.execute(
            f"INSERT INTO {qn(type(events[0])._meta.db_table)} ({columns}) VALUES "
            + ", ".join(f"({row})" for row in rows)
            + f" RETURNING {_returning_ids(type(events[0]), connection)}",
            insert_params,
        )
        returned = cursor.fetchall()
    _mark_saved(using, events, returned)
    return new_seq, new_status

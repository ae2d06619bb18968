"""The queries streams run (always on the stream database thread, see ``database.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

from django.db import connections, router
from django.db.models import Model

from django_sse.fastpaths.jsoncodec import compact_dumps, json_text
from django_sse.fastpaths.sqltext import model_field

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


def _raw_rows_supported(vendor: str) -> bool:
    # Drivers under Django return a JSONField column as its JSON text on these (psycopg and
    # psycopg2 through loaders Django registers; sqlite3 stores text). Others (Oracle's LOBs)
    # need the ORM's converters.
    return vendor in ("postgresql", "sqlite")


class Page(NamedTuple):
    """Stored events read in one go, whether more may follow them (within the range asked
    for), and the bytes of data they hold (as the database counts them)."""

    events: list[StoredEvent]
    more: bool
    size: int = 0


# The first page of a replay asks for this many events at most: the database reads every event
# it is asked for to count their bytes, and a history of large events would make a first page
# of REPLAY_PAGE_SIZE read many megabytes to send a few of them.
FIRST_PAGE_EVENTS = 64


def next_page_limit(page: Page, max_bytes: int, most: int) -> int:
    """How many events to ask for after ``page``: about twice as many as fit in ``max_bytes``
    at the size of the page's events (the database still cuts the next page at
    ``max_bytes``), between 1 and ``most``."""
    if not page.events or page.size <= 0:
        return most
    fitting = max_bytes * len(page.events) // page.size
    return max(1, min(most, 2 * fitting))


def _data_size_sql(vendor: str, column: str) -> str:
    """SQL for the size in bytes of a stored ``data`` value, as text."""
    # NULL data (the event's data was None) counts as nothing, not as NULL (which would drop
    # the row from the page).
    if vendor == "postgresql":
        return f"COALESCE(octet_length({column}), 0)"
    return f"COALESCE(length(CAST({column} AS BLOB)), 0)"  # SQLite: bytes, not characters


def _select_rows(
    using: str, job_id: uuid.UUID, after: int, upto: int | None, limit: int, max_bytes: int
) -> tuple[list[tuple[int, str, Any]], bool, int]:
    """``(seq, type, data)`` of events with ``after < seq <= upto``, oldest first, at most
    ``limit`` and at most ``max_bytes`` of data (the first one whatever its size); ``data`` as
    the database driver returns it (JSON text on the raw path). Also whether the byte limit
    cut the rows short, and the bytes of data the rows hold.

    The byte limit is applied by the database (a running sum over the page), so a page of
    large events never reaches this process whole: a replay's memory is bounded in bytes."""
    from django_sse.models import JobEvent

    connection = connections[using]
    if not _raw_rows_supported(connection.vendor):
        return _select_rows_orm(using, job_id, after, upto, limit, max_bytes)
    qn = connection.ops.quote_name
    job_field, job = model_field(JobEvent, "job")
    seq, type_, data = (qn(model_field(JobEvent, name)[1]) for name in ("seq", "type", "data"))
    text = f"{data}::text" if connection.vendor == "postgresql" else data
    size = _data_size_sql(connection.vendor, "page.data")
    sql = (
        "SELECT seq, type, data, total, running FROM ("
        f"SELECT seq, type, data, size, SUM(size) OVER (ORDER BY seq) AS running, "
        "COUNT(*) OVER () AS total FROM ("
        f"SELECT seq, type, data, {size} AS size FROM ("
        f"SELECT {seq} AS seq, {type_} AS type, {text} AS data "
        f"FROM {qn(JobEvent._meta.db_table)} WHERE {qn(job)} = %s AND {seq} > %s"
        + ("" if upto is None else f" AND {seq} <= %s")
        + f" ORDER BY {seq} LIMIT %s) page) sized) summed "
        "WHERE running <= %s OR running = size ORDER BY seq"
    )
    params: list[Any] = [job_field.get_db_prep_value(job_id, connection), after]
    if upto is not None:
        params.append(upto)
    params.extend([limit, max_bytes])
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        fetched = cursor.fetchall()
    rows = [(row[0], row[1], row[2]) for row in fetched]
    if not fetched:
        return rows, False, 0
    return rows, len(fetched) < fetched[0][3], int(fetched[-1][4])


def _select_rows_orm(
    using: str, job_id: uuid.UUID, after: int, upto: int | None, limit: int, max_bytes: int
) -> tuple[list[tuple[int, str, Any]], bool, int]:
    """``_select_rows`` through the ORM, for other databases: the sizes first, then the rows
    that fit. Sizes are the database's length of the text (characters, not bytes, on some)."""
    from django.db.models import TextField
    from django.db.models.functions import Cast, Length

    from django_sse.models import JobEvent

    qs = JobEvent.objects.db_manager(using).filter(job_id=job_id, seq__gt=after)
    if upto is not None:
        qs = qs.filter(seq__lte=upto)
    qs = qs.order_by("seq")
    sizes = qs.annotate(size=Length(Cast("data", TextField()))).values_list("seq", "size")
    last, total, count, cut = after, 0, 0, False
    for seq, size in sizes[:limit]:
        if count and total + (size or 0) > max_bytes:
            cut = True
            break
        last, total, count = seq, total + (size or 0), count + 1
    if not count:
        return [], False, 0
    decoded = qs.filter(seq__lte=last).values_list("seq", "type", "data")
    # Decoded by the ORM already: hand back text, as the raw path does.
    return [(seq, type_, compact_dumps(data)) for seq, type_, data in decoded], cut, total


def fetch_page(
    job_id: uuid.UUID,
    after: int,
    *,
    upto: int | None = None,
    limit: int = 500,
    max_bytes: int | None = None,
) -> Page:
    """Events of ``job_id`` with ``after < seq <= upto``, oldest first: at most ``limit`` of
    them and at most ``max_bytes`` of data (but always the next one, if any).

    Numbers are allocated without gaps, so the next ``limit`` events are those up to
    ``after + limit``, and the query asks for that range: its cost stays that of one page
    whatever plan the database picks. (Without the upper bound, PostgreSQL with stale
    statistics sorted every later event of the job for each page: a replay of a long history
    took time quadratic in its length.) Should that range come back short, the rest is asked
    for without the bound: it is the end of the history (and that query finds nothing at
    once), or events were deleted by hand.
    """
    from django_sse.models import JobEvent

    if max_bytes is None:
        from django_sse.conf import conf

        max_bytes = conf.MAX_BUFFERED_BYTES // 4
    using = primary(JobEvent)
    bound = after + limit if upto is None else min(upto, after + limit)
    rows, cut, used = _select_rows(using, job_id, after, bound, limit, max_bytes)
    if not cut and len(rows) < limit and bound != upto:
        start = rows[-1][0] if rows else after
        if used < max_bytes or not rows:
            rest, cut, more_used = _select_rows(
                using, job_id, start, upto, limit - len(rows), max_bytes - used
            )
            if rows and rest and more_used > max_bytes - used:
                # The rest's first event is over what is left: it starts the next page.
                rest, cut, more_used = [], True, 0
            rows.extend(rest)
            used += more_used
        else:
            cut = True
    events = [StoredEvent(seq, type_, json_text(data)) for seq, type_, data in rows]
    return Page(events, cut or len(events) == limit, used)


def fetch_events(
    job_id: uuid.UUID,
    after: int,
    *,
    upto: int | None = None,
    limit: int = 500,
    max_bytes: int | None = None,
) -> list[StoredEvent]:
    """The events of ``fetch_page``."""
    return fetch_page(job_id, after, upto=upto, limit=limit, max_bytes=max_bytes).events


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

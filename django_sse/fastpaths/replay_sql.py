"""A replay page's rows by hand-written SQL: the database cuts the page at its byte limit, and
the driver hands back the ``data`` column as JSON text, never decoded.

The ORM's route (``select_page_rows_orm``) asks twice (the sizes, then the rows that fit) and
decodes every ``data`` value only for ``replay`` to encode it again. This one asks once: a
running sum over the page (a window function) keeps a page of large events from ever reaching
this process whole, and the rows come back as the text the stream sends.

What it relies on that Django does not promise (checked on Django 5.2.19 with psycopg 3.3 and
sqlite3; the test matrix also runs Django 6.0):

- the drivers return a ``JSONField`` column cast to text (PostgreSQL: ``::text``) or stored as
  text (SQLite) as that text, without the ORM's ``from_db_value``;
- the table and column names the ORM uses, read from the model (``sqltext.model_field``).

Other databases (Oracle's LOBs need the ORM's converters) take the ORM's route.
``tests/test_fastpaths.py`` checks that both routes give the same rows, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import connections
from django.db.models import TextField
from django.db.models.functions import Cast, Length

from django_sse.fastpaths.jsoncodec import compact_dumps
from django_sse.fastpaths.sqltext import model_field
from django_sse.models import JobEvent

# ``(seq, type, data)`` rows, whether the byte limit cut them short, and the bytes they hold.
PageRows = tuple[list[tuple[int, str, Any]], bool, int]
# What ``select_page_rows`` is asked: ``(job_id, after, upto, limit, max_bytes)``.
PageAsk = tuple[uuid.UUID, int, "int | None", int, int]

# Pages asked for in one statement at most (six parameters each: within SQLite's 999).
PAGES_PER_STATEMENT = 150
# ``upto`` of a page without one (a seq is a PositiveBigIntegerField).
_NO_UPTO = 2**63 - 1


def raw_rows_supported(vendor: str) -> bool:
    """Whether the hand-written SELECT serves this database (see the module docstring)."""
    return vendor in ("postgresql", "sqlite")


def select_page_rows(
    using: str, job_id: uuid.UUID, after: int, upto: int | None, limit: int, max_bytes: int
) -> PageRows:
    """``(seq, type, data)`` of events with ``after < seq <= upto``, oldest first, at most
    ``limit`` and at most ``max_bytes`` of data (the first one whatever its size); ``data`` as
    JSON text the way the driver returns it. Also whether the byte limit cut the rows short,
    and the bytes of data the rows hold (as the database counts them)."""
    connection = connections[using]
    if not raw_rows_supported(connection.vendor):
        return select_page_rows_orm(using, job_id, after, upto, limit, max_bytes)
    qn = connection.ops.quote_name
    job_field, job = model_field(JobEvent, "job")
    seq, type_, data = (qn(model_field(JobEvent, name)[1]) for name in ("seq", "type", "data"))
    text = f"{data}::text" if connection.vendor == "postgresql" else data
    size = _data_size_sql(connection.vendor, "page.data")
    sql = (
        "SELECT seq, type, data, total, running FROM ("
        f"SELECT seq, type, data, SUM(size) OVER (ORDER BY seq) AS running, "
        "ROW_NUMBER() OVER (ORDER BY seq) AS position, COUNT(*) OVER () AS total FROM ("
        f"SELECT seq, type, data, {size} AS size FROM ("
        f"SELECT {seq} AS seq, {type_} AS type, {text} AS data "
        f"FROM {qn(JobEvent._meta.db_table)} WHERE {qn(job)} = %s AND {seq} > %s"
        + ("" if upto is None else f" AND {seq} <= %s")
        + f" ORDER BY {seq} LIMIT %s) page) sized) summed "
        # The first row whatever its size (``running = size`` would also take a second row
        # after events without data).
        "WHERE running <= %s OR position = 1 ORDER BY seq"
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


def select_pages_rows(using: str, asks: list[PageAsk]) -> list[PageRows]:
    """``select_page_rows`` of several pages (of different jobs, say) in one statement per
    ``PAGES_PER_STATEMENT``: the same rows, cut the same way, in the order asked."""
    connection = connections[using]
    if not raw_rows_supported(connection.vendor):
        return [select_page_rows(using, *ask) for ask in asks]
    pages: list[PageRows] = []
    for start in range(0, len(asks), PAGES_PER_STATEMENT):
        pages.extend(_select_pages_chunk(using, asks[start : start + PAGES_PER_STATEMENT]))
    return pages


def _select_pages_chunk(using: str, asks: list[PageAsk]) -> list[PageRows]:
    connection = connections[using]
    qn = connection.ops.quote_name
    job_field, job = model_field(JobEvent, "job")
    seq, type_, data = (qn(model_field(JobEvent, name)[1]) for name in ("seq", "type", "data"))
    text = f"e.{data}::text" if connection.vendor == "postgresql" else f"e.{data}"
    size = _data_size_sql(connection.vendor, "page.data")
    # One row of parameters per page: its number, job, range, limit and byte limit. The same
    # windows as select_page_rows, per page (PARTITION BY n); a page's LIMIT becomes
    # ``position <= lim`` (the running sum of a row only counts the rows before it).
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(asks))
    sql = (
        f"WITH asks (n, job, after, upto, lim, most) AS (VALUES {values}) "
        "SELECT n, seq, type, data, total, running FROM ("
        "SELECT n, seq, type, data, lim, most, "
        "SUM(size) OVER (PARTITION BY n ORDER BY seq) AS running, "
        "ROW_NUMBER() OVER (PARTITION BY n ORDER BY seq) AS position, "
        "COUNT(*) OVER (PARTITION BY n) AS total FROM ("
        f"SELECT n, seq, type, data, lim, most, {size} AS size FROM ("
        f"SELECT asks.n AS n, e.{seq} AS seq, e.{type_} AS type, {text} AS data, "
        "asks.lim AS lim, asks.most AS most "
        f"FROM asks JOIN {qn(JobEvent._meta.db_table)} e ON e.{qn(job)} = asks.job "
        f"AND e.{seq} > asks.after AND e.{seq} <= asks.upto) page) sized) summed "
        "WHERE position <= lim AND (running <= most OR position = 1) ORDER BY n, seq"
    )
    params: list[Any] = []
    for n, (job_id, after, upto, limit, max_bytes) in enumerate(asks):
        prepared = job_field.get_db_prep_value(job_id, connection)
        params.extend([n, prepared, after, _NO_UPTO if upto is None else upto, limit, max_bytes])
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        fetched = cursor.fetchall()
    found: list[list[tuple[Any, ...]]] = [[] for _ in asks]
    for row in fetched:
        found[row[0]].append(row)
    pages: list[PageRows] = []
    for (_job_id, _after, _upto, limit, _max_bytes), page in zip(asks, found, strict=True):
        rows = [(row[1], row[2], row[3]) for row in page]
        if not page:
            pages.append((rows, False, 0))
            continue
        # The rows the page's LIMIT would have let through, some of them cut by bytes.
        within_limit = min(int(page[0][4]), limit)
        pages.append((rows, len(page) < within_limit, int(page[-1][5])))
    return pages


def _data_size_sql(vendor: str, column: str) -> str:
    """SQL for the size in bytes of a stored ``data`` value, as text."""
    # NULL data (the event's data was None) counts as nothing, not as NULL (which would drop
    # the row from the page).
    if vendor == "postgresql":
        return f"COALESCE(octet_length({column}), 0)"
    return f"COALESCE(length(CAST({column} AS BLOB)), 0)"  # SQLite: bytes, not characters


def select_page_rows_orm(
    using: str, job_id: uuid.UUID, after: int, upto: int | None, limit: int, max_bytes: int
) -> PageRows:
    """``select_page_rows`` through the ORM: the sizes first, then the rows that fit. Sizes are
    the database's length of the text (characters, not bytes, on some)."""
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
    # Decoded by the ORM already: hand back text, as the raw route does.
    return [(seq, type_, compact_dumps(data)) for seq, type_, data in decoded], cut, total

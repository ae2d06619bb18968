"""The queries streams run (always on the stream database thread, see ``database.py``)."""

from __future__ import annotations

import contextlib
import json
import json.encoder
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, router
from django.db.models import Field, Model

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


def _no_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _compact_encoder() -> Callable[[Any], str]:
    """``validation.dump_data`` for decoded JSON, a replay's cost per event.

    Decoded JSON holds dicts, lists, strings, numbers, booleans and None only, so Django's
    encoder never gets to its ``default()``. The standard library's C encoder does the work
    either way; ``json.dumps`` builds a new one for every call, this one is built once. Should
    the C encoder be missing or encode differently, the plain encoder is used.
    """
    reference = DjangoJSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return reference
    try:
        encoder = make(
            None, _no_default, json.encoder.encode_basestring, None, ":", ",", False, False, True
        )

        def encode(value: Any) -> str:
            return "".join(encoder(value, 0))

        samples: list[Any] = [
            {"a": [1, -2.5, 1e-07, 1e300, 10**30, True, False, None], "": {}, "b": []},
            'é \n " \\ \u2028 \x00 \x7f',
            1.5,
            None,
        ]
        if any(encode(sample) != reference(sample) for sample in samples):
            return reference
    except Exception:
        return reference
    return encode


_dump = _compact_encoder()
# The C scanner under ``json.loads``, without its wrapper (``json.loads`` still handles what it
# leaves out: surrounding whitespace, trailing data, errors).
_scan: Callable[[str, int], tuple[Any, int]]
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _json_text(value: Any) -> str:
    """Compact JSON text of a ``data`` column value as the driver returns it: what the ORM's
    ``JSONField.from_db_value`` (text that is not JSON stays a string) and ``dump_data`` make
    of it."""
    if value is None:
        return "null"
    if isinstance(value, str):
        try:
            decoded, end = _scan(value, 0)
        except (StopIteration, ValueError):
            end = -1
        if end == len(value):
            return _dump(decoded)
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)
    return _dump(value)


def model_field(model: type[Model], name: str) -> tuple[Field[Any, Any], str]:
    """A concrete field of ``model`` and its column, for hand-written SQL."""
    found = model._meta.get_field(name)
    assert isinstance(found, Field) and found.column, name
    return found, found.column


def _raw_rows_supported(vendor: str) -> bool:
    # Drivers under Django return a JSONField column as its JSON text on these (psycopg and
    # psycopg2 through loaders Django registers; sqlite3 stores text). Others (Oracle's LOBs)
    # need the ORM's converters.
    return vendor in ("postgresql", "sqlite")


def _select_rows(
    using: str, job_id: uuid.UUID, after: int, upto: int | None, limit: int
) -> list[tuple[int, str, Any]]:
    """``(seq, type, data)`` of events with ``after < seq <= upto``, oldest first, at most
    ``limit``; ``data`` as the database driver returns it (JSON text on the raw path)."""
    from django_sse.models import JobEvent

    connection = connections[using]
    if not _raw_rows_supported(connection.vendor):
        qs = JobEvent.objects.db_manager(using).filter(job_id=job_id, seq__gt=after)
        if upto is not None:
            qs = qs.filter(seq__lte=upto)
        decoded = qs.order_by("seq").values_list("seq", "type", "data")[:limit]
        # Decoded by the ORM already: hand back text, as the raw path does.
        return [(seq, type_, _dump(data)) for seq, type_, data in decoded]
    qn = connection.ops.quote_name
    job_field, job = model_field(JobEvent, "job")
    seq, type_, data = (qn(model_field(JobEvent, name)[1]) for name in ("seq", "type", "data"))
    sql = (
        f"SELECT {seq}, {type_}, {data} FROM {qn(JobEvent._meta.db_table)} "
        f"WHERE {qn(job)} = %s AND {seq} > %s"
        + ("" if upto is None else f" AND {seq} <= %s")
        + f" ORDER BY {seq} LIMIT %s"
    )
    params: list[Any] = [job_field.get_db_prep_value(job_id, connection), after]
    if upto is not None:
        params.append(upto)
    params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows: list[tuple[int, str, Any]] = cursor.fetchall()
    return rows


def fetch_events(
    job_id: uuid.UUID, after: int, *, upto: int | None = None, limit: int = 500
) -> list[StoredEvent]:
    """Events of ``job_id`` with ``after < seq <= upto``, oldest first, at most ``limit``.

    Numbers are allocated without gaps, so the next ``limit`` events are those up to
    ``after + limit``, and the query asks for that range: its cost stays that of one page
    whatever plan the database picks. (Without the upper bound, PostgreSQL with stale
    statistics sorted every later event of the job for each page: a replay of a long history
    took time quadratic in its length.) Should that range come back short, the rest is asked
    for without the bound: it is the end of the history (and that query finds nothing at
    once), or events were deleted by hand.
    """
    from django_sse.models import JobEvent

    using = primary(JobEvent)
    bound = after + limit if upto is None else min(upto, after + limit)
    rows = _select_rows(using, job_id, after, bound, limit)
    if len(rows) < limit and bound != upto:
        start = rows[-1][0] if rows else after
        rows.extend(_select_rows(using, job_id, start, upto, limit - len(rows)))
    return [StoredEvent(seq, type_, _json_text(data)) for seq, type_, data in rows]


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

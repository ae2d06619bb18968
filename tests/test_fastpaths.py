"""The fast paths (``django_sse/fastpaths/``) give what the plain, public route gives."""

from __future__ import annotations

import contextlib
import datetime
import json
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from hypothesis import given, settings
from hypothesis import strategies as st

from django_sse.fastpaths import sql
from django_sse.fastpaths.jsoncodec import build_compact_dumps, json_text
from django_sse.jsontext import dump_data
from django_sse.models import Job, JobEvent

# -- jsoncodec: the JSON text of stored data ---------------------------------------------------

# Values json.loads can give back: what a JSONField column holds.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


def reference(value: Any) -> str:
    """What the ORM's JSONField.from_db_value and dump_data made of a column value."""
    if value is None:
        return "null"
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        decoded = value
    return dump_data(decoded)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_json_text_is_dump_data_of_the_decoded_value(value: Any) -> None:
    # As stored (SQLite: compact, ASCII escapes) and as PostgreSQL's jsonb gives it back.
    for text in (
        json.dumps(value, separators=(",", ":")),
        json.dumps(value, ensure_ascii=False),
        f" {json.dumps(value)}\n",
    ):
        assert json_text(text) == reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        '{"a": 1} trailing',
        "[1, 2",
        "NaN",
        "-Infinity",
        '"\\ud800"',
        '{"é": "\\u00e9", "s": "a\\nb\\r\\u2028"}',
        "1e-07",
        "0.0000001",
        "100000000000000000000000",
        "12.50",
    ],
)
def test_json_text_of_odd_column_values(text: str) -> None:
    assert json_text(text) == reference(text)
    assert json_text(None) == "null"


def test_compact_encoder_without_the_c_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    encode = build_compact_dumps()
    value = {"a": [1, 2.5, None, True], "é": "ü\n"}
    assert encode(value) == dump_data(value)


@pytest.mark.parametrize("fault", ["disagrees", "raises"])
def test_compact_encoder_is_checked_before_use(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    real = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    assert real is not None

    def changed(*args: Any) -> Any:
        if args[0] is not None:  # json.dumps' own call (it checks for cycles): untouched
            return real(*args)
        if fault == "raises":
            raise TypeError("another signature")
        return real(*args[:4], ": ", ", ", *args[6:])  # spaces after the separators

    monkeypatch.setattr(json.encoder, "c_make_encoder", changed)
    encode = build_compact_dumps()
    assert encode({"a": [1, 2]}) == '{"a":[1,2]}'


# -- sql: the hand-written write of a batch of events ------------------------------------------

NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=datetime.timezone.utc)
# Batches as recording.py hands them over: (type, data) of each event, the job fields they set.
BATCHES: dict[str, tuple[list[tuple[str, Any]], dict[str, Any]]] = {
    "one event": ([("step", {"n": 1})], {}),
    "progress": (
        [("progress", {"current": 3, "total": 10, "message": "é"})],
        {"current": 3, "total": 10, "message": "é", "status": "running"},
    ),
    "several, no data": ([("a", None), ("b", None), ("c", [])], {}),
    "an end with a result": (
        [("note", "x"), ("succeeded", {"result": {"rows": [1, 2.5, None]}})],
        {"status": "succeeded", "result": {"rows": [1, 2.5, None]}, "finished_at": NOW},
    ),
    "an error": ([("failed", {"error": "boom"})], {"status": "failed", "error": "boom"}),
}


def write(
    job: Job, batch: tuple[list[tuple[str, Any]], dict[str, Any]]
) -> tuple[tuple[int, str] | None, list[JobEvent]]:
    events = [JobEvent(job_id=job.pk, type=type_, data=data) for type_, data in batch[0]]
    return sql.write_events("default", Job, job.pk, dict(batch[1]), NOW, events), events


def rows(job: Job) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job's row and its events' rows as values, without what differs between two jobs."""
    job_row = Job.objects.filter(pk=job.pk).values().get()
    for name in ("id", "created_at"):
        job_row.pop(name)
    event_rows = list(
        JobEvent.objects.filter(job=job).order_by("seq").values("seq", "type", "data")
    )
    return job_row, event_rows


def two_jobs(status: str = "running") -> tuple[Job, Job]:
    owner = User.objects.create(username=f"u{uuid.uuid4().hex}")
    fields = {"owner": owner, "name": "Same", "status": status, "last_seq": 4, "current": 1}
    return Job.objects.create(**fields), Job.objects.create(**fields)


def statements(queries: CaptureQueriesContext) -> list[str]:
    """The first word of each SQL statement run (transaction control left out)."""
    kinds = ("WITH", "UPDATE", "INSERT", "SELECT")
    found = [q["sql"].lstrip().split()[0] for q in queries.captured_queries]
    return [kind for kind in found if kind in kinds]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_atomic", [False, True], ids=["autocommit", "in atomic"])
@pytest.mark.parametrize("name", list(BATCHES))
def test_hand_written_and_orm_writes_give_the_same_rows(
    monkeypatch: pytest.MonkeyPatch, name: str, in_atomic: bool
) -> None:
    assert sql.can_update_returning(connection)  # PostgreSQL, SQLite 3.35+: the fast route
    fast_job, plain_job = two_jobs()
    outer = transaction.atomic if in_atomic else contextlib.nullcontext
    with outer(), CaptureQueriesContext(connection) as queries:
        fast, fast_events = write(fast_job, BATCHES[name])
    assert "SELECT" not in statements(queries)
    monkeypatch.setattr(sql, "can_update_returning", lambda connection: False)
    with outer(), CaptureQueriesContext(connection) as queries:
        plain, plain_events = write(plain_job, BATCHES[name])
    assert statements(queries)[:2] == ["UPDATE", "SELECT"]  # the ORM's route
    count = len(BATCHES[name][0])
    assert fast == plain == (4 + count, BATCHES[name][1].get("status", "running"))
    assert rows(fast_job) == rows(plain_job)
    # The events come back saved, as the ORM's save() leaves them.
    for job, events in ((fast_job, fast_events), (plain_job, plain_events)):
        assert [e.seq for e in events] == list(range(5, 5 + count))
        assert [(e._state.adding, e._state.db) for e in events] == [(False, "default")] * count
        stored = {e.pk: (e.seq, e.type, e.data) for e in JobEvent.objects.filter(job=job)}
        assert {e.pk: (e.seq, e.type, e.data) for e in events} == stored
        assert all(e.created_at is not None for e in events)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("status", ["succeeded", "cancelled"])
def test_hand_written_and_orm_writes_leave_a_finished_job_alone(
    monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    fast_job, plain_job = two_jobs(status)
    before = rows(fast_job), rows(plain_job)
    assert write(fast_job, BATCHES["one event"])[0] is None
    monkeypatch.setattr(sql, "can_update_returning", lambda connection: False)
    assert write(plain_job, BATCHES["one event"])[0] is None
    assert (rows(fast_job), rows(plain_job)) == before


@pytest.mark.django_db(transaction=True)
def test_an_update_with_an_expression_takes_the_orm_route() -> None:
    job = two_jobs()[0]
    events = [JobEvent(job_id=job.pk, type="bump", data={})]
    with CaptureQueriesContext(connection) as queries:
        written = sql.write_events(
            "default", Job, job.pk, {"current": F("current") + 5}, NOW, events
        )
    assert written == (5, "running")
    assert statements(queries) == ["UPDATE", "SELECT", "INSERT"]
    assert rows(job)[0]["current"] == 6

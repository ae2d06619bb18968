"""Reading stored events back (``replay.py``): ``fetch_events``' pages."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_sse import publish, replay
from django_sse.fastpaths import replay_sql
from django_sse.jsontext import dump_data
from django_sse.models import Job, JobEvent

pytestmark = pytest.mark.django_db(transaction=True)

# -- fetch_events ----------------------------------------------------------------------------


@pytest.fixture
def job() -> Job:
    return Job.objects.create(owner=User.objects.create(username="ann"))


@pytest.fixture(params=["raw", "orm"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """ "raw": a cursor (PostgreSQL, SQLite); "orm": the ORM, for other databases."""
    if request.param == "orm":
        monkeypatch.setattr(replay_sql, "raw_rows_supported", lambda vendor: False)
    return str(request.param)


def seqs(job: Job, after: int, **kwargs: Any) -> list[int]:
    return [e.seq for e in replay.fetch_events(job.pk, after, **kwargs)]


DATA: list[Any] = [
    {"n": 1, "é": "ü", "s": "line\nbreak", "f": 1764000000.123456},
    [1, 2.5, None, True, {"x": []}],
    "plain text",
    None,
    10**20,
    {"b": 1, "a": 2},
]


def test_fetch_events_gives_the_wire_text(read_path: str, job: Job) -> None:
    for value in DATA:
        publish(job, "step", value)
    events = replay.fetch_events(job.pk, 0)
    assert [(e.seq, e.type) for e in events] == [(n, "step") for n in range(1, len(DATA) + 1)]
    for event in events:
        stored = JobEvent.objects.get(job=job, seq=event.seq).data
        assert event.data == dump_data(stored)


def test_fetch_events_pages(read_path: str, job: Job) -> None:
    for n in range(10):
        publish(job, "step", n)
    assert seqs(job, 0, limit=4) == [1, 2, 3, 4]
    assert seqs(job, 4, limit=4) == [5, 6, 7, 8]
    assert seqs(job, 8, limit=4) == [9, 10]
    assert seqs(job, 10, limit=4) == []
    assert seqs(job, 2, upto=5, limit=4) == [3, 4, 5]
    assert seqs(job, 2, upto=9, limit=4) == [3, 4, 5, 6]
    assert seqs(job, 5, upto=5, limit=4) == []
    assert seqs(job, 0, limit=100) == list(range(1, 11))
    assert replay.fetch_events(uuid.uuid4(), 0) == []


def test_fetch_events_past_missing_events(read_path: str, job: Job) -> None:
    for n in range(10):
        publish(job, "step", n)
    JobEvent.objects.filter(job=job, seq__in=[3, 4, 5]).delete()  # by hand
    assert seqs(job, 0, limit=4) == [1, 2, 6, 7]
    assert seqs(job, 2, limit=4) == [6, 7, 8, 9]
    assert seqs(job, 0, upto=6, limit=4) == [1, 2, 6]
    assert seqs(job, 0, upto=4, limit=4) == [1, 2]


def test_a_full_page_is_one_query(job: Job) -> None:
    for n in range(10):
        publish(job, "step", n)
    with CaptureQueriesContext(connection) as captured:
        assert seqs(job, 0, limit=5) == [1, 2, 3, 4, 5]
        assert seqs(job, 3, upto=6, limit=5) == [4, 5, 6]
    assert len(captured.captured_queries) == 2
    # The page's upper bound is in the query: its cost is the page's whatever the plan.
    assert all(" <= " in q["sql"] for q in captured.captured_queries)
    # The end of the history: one more query finds that nothing follows.
    with CaptureQueriesContext(connection) as captured:
        assert seqs(job, 8, limit=5) == [9, 10]
    assert len(captured.captured_queries) == 2


def test_a_page_stops_at_its_byte_limit(read_path: str, job: Job) -> None:
    for _ in range(6):
        publish(job, "big", "x" * 1000)  # 1,002 bytes of JSON each
    page = replay.fetch_page(job.pk, 0, limit=100, max_bytes=2500)
    # Two whole events fit, the third would go past the limit: the database cuts the page,
    # and says more follow.
    assert [e.seq for e in page.events] == [1, 2]
    assert page.more
    page = replay.fetch_page(job.pk, 2, limit=100, max_bytes=2500)
    assert [e.seq for e in page.events] == [3, 4]
    assert [e.seq for e in replay.fetch_page(job.pk, 4, limit=100, max_bytes=2500).events] == [
        5,
        6,
    ]
    last = replay.fetch_page(job.pk, 6, limit=100, max_bytes=2500)
    assert last == replay.Page([], False)


def test_a_page_always_holds_the_next_event_whatever_its_size(read_path: str, job: Job) -> None:
    publish(job, "big", "x" * 5000)
    publish(job, "small", 1)
    page = replay.fetch_page(job.pk, 0, limit=100, max_bytes=100)
    assert [e.seq for e in page.events] == [1]
    assert page.more


def test_events_without_data_count_as_nothing(read_path: str, job: Job) -> None:
    for _ in range(5):
        publish(job, "empty", None)
    page = replay.fetch_page(job.pk, 0, limit=100, max_bytes=10)
    assert [e.seq for e in page.events] == [1, 2, 3, 4, 5]
    assert not page.more


def test_a_full_page_says_more_may_follow(read_path: str, job: Job) -> None:
    for n in range(4):
        publish(job, "step", n)
    assert replay.fetch_page(job.pk, 0, limit=2).more
    assert not replay.fetch_page(job.pk, 2, limit=3).more


# -- fetch_pages: the first pages of streams opening together ---------------------------------


def test_pages_asked_together_are_the_pages_asked_alone(read_path: str, job: Job) -> None:
    # Three jobs: this one with events of every size and a hole (deleted by hand), one with a
    # large event, one with none.
    for value in [*DATA, {"big": "x" * 300}, {"n": 8}, "y" * 50, {"n": 10}]:
        publish(job, "step", value)
    JobEvent.objects.filter(job=job, seq=6).delete()
    other = Job.objects.create(owner=job.owner)
    publish(other, "step", "z" * 500)
    publish(other, "step", 1)
    empty = Job.objects.create(owner=job.owner)
    asks: list[replay_sql.PageAsk] = []
    for job_id, last in ((job.pk, 10), (other.pk, 2), (empty.pk, 0), (uuid.uuid4(), 0)):
        for after in range(last + 1):
            for upto in (None, after, after + 2, last):
                for limit in (1, 3, 64):
                    for max_bytes in (1, 40, 120, 10_000):
                        asks.append((job_id, after, upto, limit, max_bytes))
    alone = [
        replay.fetch_page(job_id, after, upto=upto, limit=limit, max_bytes=max_bytes)
        for job_id, after, upto, limit, max_bytes in asks
    ]
    assert replay.fetch_pages(asks) == alone
    # Not only empty pages and first events: the cases cover the cuts.
    assert any(page.more and len(page.events) > 1 for page in alone)
    assert any(not page.more and len(page.events) > 1 for page in alone)


def test_pages_asked_together_take_two_queries_at_most(job: Job) -> None:
    jobs = [Job.objects.create(owner=job.owner) for _ in range(20)]
    for n, other in enumerate(jobs):
        for _ in range(n % 4):
            publish(other, "step", n)
    asks: list[replay_sql.PageAsk] = [(other.pk, 0, None, 64, 10_000) for other in jobs]
    with CaptureQueriesContext(connection) as queries:
        pages = replay.fetch_pages(asks)
    # The ranges, then the rest of the pages that came back short (the ends of histories).
    assert len(queries) == 2
    assert [[event.seq for event in page.events] for page in pages] == [
        list(range(1, n % 4 + 1)) for n in range(20)
    ]

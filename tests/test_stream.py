"""A job stream's replay (``stream.py``): a page of stored events per chunk, the next page read
meanwhile."""

from __future__ import annotations

import asyncio
import threading
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.db import DatabaseError
from django.http import HttpRequest
from django.test import override_settings

from django_sse import auth, publish
from django_sse import stream as stream_module
from django_sse.admission import Ticket
from django_sse.database import run_in_db_thread
from django_sse.identity import Identity, hash_session_key
from django_sse.lifecycle import TERMINAL_TYPES
from django_sse.models import Job
from django_sse.replay import Page, StoredEvent, fetch_page, fetch_pages
from django_sse.sse import encode_event
from django_sse.stream import JobStream
from tests.utils import db_thread_held, make_session

JOB_ID = uuid.uuid4()


def make_stream(resume_from: int = 0) -> JobStream:
    access = SimpleNamespace(job=SimpleNamespace(pk=JOB_ID), user=None, identity=Identity(1, None))
    return JobStream(None, access, resume_from, Ticket(None, "test"))  # type: ignore[arg-type]


def one_by_one(events: list[StoredEvent], after: int) -> tuple[bytes, int, int, bool]:
    """The chunk encode_event() makes of ``events``, event by event: the reference."""
    parts = []
    sent = 0
    finished = False
    for event in events:
        if event.seq <= after:
            continue
        parts.append(encode_event(event.data, event=event.type, id=event.seq))
        after = event.seq
        sent += 1
        if event.type in TERMINAL_TYPES:
            finished = True
            break
    return b"".join(parts), after, sent, finished


PAGES = [
    [StoredEvent(1, "step", '{"n":1}'), StoredEvent(2, "progress", '{"é":"ü\\n"}')],
    # Data over several lines (not JSON), an event type the quick path leaves to encode_event.
    [StoredEvent(3, "step", "a\nb\r\nc\rd"), StoredEvent(4, "a b", "x"), StoredEvent(5, "x", "")],
    # Already sent, then a terminal event, then one that must not go out.
    [StoredEvent(2, "step", "1"), StoredEvent(6, "succeeded", "{}"), StoredEvent(7, "late", "1")],
    [StoredEvent(8, "step", '"\u2028 \U0001f600"')],
]


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("resume_from", [0, 3])
def test_a_page_is_what_encode_event_makes_of_each_event(
    page: list[StoredEvent], resume_from: int
) -> None:
    stream = make_stream(resume_from)
    chunk = stream._encode(page)
    expected, last_seq, sent, finished = one_by_one(page, resume_from)
    assert chunk == expected
    assert (stream.last_seq, stream.sent) == (last_seq, sent)
    assert stream.finished == finished


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_an_event_type_that_would_break_the_stream_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="must not contain"):
        make_stream()._encode([StoredEvent(1, bad, "{}")])


# -- reading ahead ---------------------------------------------------------------------------


class FakeStore:
    """``fetch_page`` over ``count`` events, run on the stream database thread as usual."""

    def __init__(self, count: int, terminal_at: int | None = None) -> None:
        self.count = count
        self.terminal_at = terminal_at
        self.calls: list[tuple[int, int | None]] = []
        self.gate: dict[int, threading.Event] = {}  # call number -> released when set
        self.fail_on: int | None = None

    def fetch_page(
        self,
        job_id: uuid.UUID,
        after: int,
        *,
        upto: int | None = None,
        limit: int = 500,
        max_bytes: int | None = None,
    ) -> Page:
        self.calls.append((after, upto))
        number = len(self.calls)
        if number in self.gate:
            assert self.gate[number].wait(10)
        if number == self.fail_on:
            raise DatabaseError("connection lost")
        end = self.count if upto is None else min(upto, self.count)
        events = [
            StoredEvent(seq, "succeeded" if seq == self.terminal_at else "step", str(seq))
            for seq in range(after + 1, min(end, after + limit) + 1)
        ]
        return Page(events, len(events) == limit)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    fake = FakeStore(7)
    monkeypatch.setattr(stream_module, "fetch_page", fake.fetch_page)
    return fake


async def wait_for(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


def ids(chunk: bytes) -> list[int]:
    return [int(line[4:]) for line in chunk.decode().splitlines() if line.startswith("id: ")]


@pytest.mark.asyncio
@override_settings(DJANGO_SSE={"REPLAY_PAGE_SIZE": 3})
async def test_the_next_page_is_read_while_a_page_is_sent(store: FakeStore) -> None:
    stream = make_stream()
    reader = stream._read()
    first = await reader.__anext__()
    assert ids(first) == [1, 2, 3]
    # The chunk is out; the next page is being read without being asked for.
    await wait_for(lambda: len(store.calls) == 2)
    rest = [chunk async for chunk in reader]
    assert [ids(chunk) for chunk in rest] == [[4, 5, 6], [7]]
    assert store.calls == [(0, None), (3, None), (6, None)]  # a short page is the last
    assert (stream.last_seq, stream.sent) == (7, 7)


@pytest.mark.asyncio
@override_settings(DJANGO_SSE={"REPLAY_PAGE_SIZE": 3})
async def test_read_ahead_stops_at_upto_and_at_the_end(store: FakeStore) -> None:
    stream = make_stream(1)
    chunks = [chunk async for chunk in stream._read(upto=6)]
    assert [ids(chunk) for chunk in chunks] == [[2, 3, 4], [5, 6]]
    assert store.calls == [(1, 6), (4, 6)]
    store.calls.clear()
    store.count = 6
    stream = make_stream()
    assert [ids(chunk) async for chunk in stream._read()] == [[1, 2, 3], [4, 5, 6]]
    assert store.calls == [(0, None), (3, None), (6, None)]  # the last page was empty


@pytest.mark.asyncio
@override_settings(DJANGO_SSE={"REPLAY_PAGE_SIZE": 3})
async def test_a_terminal_event_ends_the_replay(store: FakeStore) -> None:
    store.terminal_at = 2
    stream = make_stream()
    assert [ids(chunk) async for chunk in stream._read()] == [[1, 2]]
    assert stream.finished
    # The page read ahead is dropped; nothing more goes out.
    assert [chunk async for chunk in stream._read()] == []


@pytest.mark.asyncio
@override_settings(DJANGO_SSE={"REPLAY_PAGE_SIZE": 3})
async def test_a_stream_closed_mid_replay_drops_the_page_read_ahead(store: FakeStore) -> None:
    release = threading.Event()
    store.gate[2] = release
    reader = make_stream()._read()
    assert ids(await reader.__anext__()) == [1, 2, 3]
    await wait_for(lambda: len(store.calls) == 2)
    await reader.aclose()  # the client went away while page 2 was being read
    release.set()
    # The database thread is free again, and page 2 went nowhere.
    assert [ids(chunk) async for chunk in make_stream(6)._read()] == [[7]]


@pytest.mark.asyncio
@override_settings(DJANGO_SSE={"REPLAY_PAGE_SIZE": 3})
async def test_a_database_error_while_reading_ahead_reaches_the_stream(store: FakeStore) -> None:
    store.fail_on = 2
    stream = make_stream()
    reader = stream._read()
    assert ids(await reader.__anext__()) == [1, 2, 3]
    with pytest.raises(DatabaseError):
        await reader.__anext__()
    assert (stream.last_seq, stream.sent) == (3, 3)


# -- first pages read together -----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@override_settings(DJANGO_SSE={"DB_THREADS": 1})
async def test_replays_starting_together_read_their_first_pages_in_one_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    def jobs_with_histories() -> list[Job]:
        owner = User.objects.create(username="many")
        jobs = [Job.objects.create(owner=owner) for _ in range(8)]
        for n, job in enumerate(jobs):
            for _ in range(n):
                publish(job, "step", n)
        return jobs

    jobs = await sync_to_async(jobs_with_histories)()
    calls: list[int] = []

    def counting(asks: Any) -> list[Page]:
        calls.append(len(asks))
        return fetch_pages(asks)

    monkeypatch.setattr(stream_module, "fetch_pages", counting)
    async with db_thread_held():
        reading = [
            asyncio.ensure_future(stream_module.first_pages.run((job.pk, 0, None, 64, 10_000)))
            for job in jobs
        ]
        await asyncio.sleep(0)
        assert stream_module.first_pages.waiting == len(jobs)
    pages = await asyncio.gather(*reading)
    assert calls == [len(jobs)]
    alone = [
        await run_in_db_thread(fetch_page, job.pk, 0, limit=64, max_bytes=10_000) for job in jobs
    ]
    assert pages == alone
    assert [len(page.events) for page in pages] == list(range(8))


# -- session checks falling due together -------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@override_settings(DJANGO_SSE={"DB_THREADS": 1})
async def test_streams_checked_together_read_their_jobs_once_and_keep_their_own_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    def visitors() -> list[tuple[str, Job]]:
        keys = [make_session() for _ in range(4)]
        return [(key, Job.objects.create(session_hash=hash_session_key(key))) for key in keys]

    (key_a, job_a), (key_b, job_b), (key_c, job_c), (key_d, job_d) = await sync_to_async(visitors)()
    await Session.objects.filter(session_key=key_b).adelete()  # logged out since it opened
    asked: list[int] = []
    original = Job.objects.in_bulk

    def counting(id_list: Any = None, **kwargs: Any) -> Any:
        asked.append(len(id_list or ()))
        return original(id_list, **kwargs)

    monkeypatch.setattr(Job.objects, "in_bulk", counting)
    broken_request = HttpRequest()

    def failing_store(probe: HttpRequest) -> Any:
        if probe.session.session_key == key_d:
            raise RuntimeError("a custom session engine's bug")
        return original_store(probe)

    original_store = auth._identity_of
    monkeypatch.setattr(auth, "_identity_of", failing_store)
    asks = [
        (HttpRequest(), job_a.pk, Identity(None, key_a)),
        (HttpRequest(), job_b.pk, Identity(None, key_b)),  # revoked
        (HttpRequest(), job_a.pk, Identity(None, key_c)),  # not theirs
        (HttpRequest(), job_c.pk, Identity(None, key_c)),
        (broken_request, job_d.pk, Identity(None, key_d)),  # its check raises
        (HttpRequest(), uuid.uuid4(), Identity(None, key_a)),  # the job was deleted
    ]
    async with db_thread_held():
        checking = [asyncio.ensure_future(stream_module.rechecks.run(ask)) for ask in asks]
        await asyncio.sleep(0)
        assert stream_module.rechecks.waiting == len(asks)
    outcomes = await asyncio.gather(*checking, return_exceptions=True)
    assert outcomes[:4] == [True, False, False, True]
    assert isinstance(outcomes[4], RuntimeError)
    assert outcomes[5] is False
    assert asked == [5]  # six checks, five jobs, one query

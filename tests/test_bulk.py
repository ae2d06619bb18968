"""Publishing many events at once: ``publish_many``, its batch layer messages and what streams
make of them."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.checks import Error
from django.db import transaction
from django.test import override_settings

from django_sse import apublish_many, checks, publish, publish_many
from django_sse.event_message import parse_batch_message
from django_sse.exceptions import (
    EventDataNotSerializable,
    EventDataTooLarge,
    InvalidEventType,
    JobFinished,
)
from django_sse.fastpaths import sql
from django_sse.feed import JobFeed
from django_sse.hub import get_hub
from django_sse.inbox import Inbox
from django_sse.jsontext import dump_data
from django_sse.models import Job, JobEvent
from django_sse.pushing import BATCH_MESSAGE_MAX_BYTES, BATCH_MESSAGE_TYPE, batch_messages
from django_sse.replay import StoredEvent, fetch_events
from django_sse.resume import MAX_SEQ
from tests.utils import message, open_stream, plain_application, subscribe, writing

pytestmark = pytest.mark.django_db(transaction=True)

NO_POLL = {"POLL_SECONDS": 60}


@pytest.fixture(params=["native", "orm"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each write path: the test database's own, and the ORM fallback of other databases."""
    if request.param == "orm":
        monkeypatch.setattr(sql, "can_update_returning", lambda connection: False)
    return str(request.param)


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[int]]]:
    """The seqs of each batch handed to the channel layer, in the order of the pushes."""
    seen: list[list[int]] = []
    monkeypatch.setattr(
        "django_sse.pushing.push_events", lambda events: seen.append([e.seq for e in events])
    )
    yield seen


def stored(job: Job) -> list[tuple[int, str, Any]]:
    return list(JobEvent.objects.filter(job=job).order_by("seq").values_list("seq", "type", "data"))


def batch_message(job: Job, first: int, count: int) -> dict[str, Any]:
    """A batch message announcing ``count`` events of ``job`` from ``first``, as
    ``publish_many`` sends it."""
    events = [["row", json.dumps(n)] for n in range(first, first + count)]
    return {"type": BATCH_MESSAGE_TYPE, "job": job.pk.hex, "seq": first, "events": events}


# -- recording ------------------------------------------------------------------------------


def test_a_batch_gets_consecutive_seqs_and_one_push(
    write_path: str, job: Job, pushed: list[list[int]]
) -> None:
    publish(job, "before")
    events = publish_many(job, [("row", {"n": n}) for n in range(5)])
    assert [(e.seq, e.type, e.data) for e in events] == [(n + 2, "row", {"n": n}) for n in range(5)]
    assert stored(job) == [(1, "before", None)] + [(n + 2, "row", {"n": n}) for n in range(5)]
    assert job.last_seq == 6
    job.refresh_from_db()
    assert job.last_seq == 6
    assert pushed == [[1], [2, 3, 4, 5, 6]]


@pytest.mark.parametrize(
    "data",
    [None, "text", 1.5, [1, None], {"k": None}, {"q": 'a"b\\c{},() NULL', "u": "é\u2028"}],
)
def test_a_batch_of_one_kind_of_data_is_stored_as_given_in_seq_order(
    write_path: str, job: Job, pushed: list[list[int]], data: Any
) -> None:
    # All-NULL (or all-text) data must not make the database guess another column type.
    events = publish_many(job, [("row", data)] * 3)
    assert stored(job) == [(n, "row", data) for n in (1, 2, 3)]
    pks = list(JobEvent.objects.filter(job=job).order_by("seq").values_list("pk", flat=True))
    assert [e.pk for e in events] == pks == sorted(pks)


def test_event_types_that_read_like_sql_are_stored_as_given(
    write_path: str, job: Job, pushed: list[list[int]]
) -> None:
    types = ["NULL", "null", "a.b-c_d", "x" * 64]
    publish_many(job, [(t, None) for t in types])
    assert [type_ for _seq, type_, _data in stored(job)] == types


def test_lists_are_pairs_too_and_an_empty_batch_records_nothing(
    job: Job, pushed: list[list[int]]
) -> None:
    assert publish_many(job, []) == []
    # Lists, as JSON gives pairs, pass at run time.
    pairs = iter([["a", 1], ["b", 2]])
    assert [e.seq for e in publish_many(job, pairs)] == [1, 2]  # type: ignore[arg-type]
    assert pushed == [[1, 2]]


def test_a_rolled_back_batch_is_neither_stored_nor_pushed(
    job: Job, pushed: list[list[int]]
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        publish_many(job, [("row", n) for n in range(3)])
        raise RuntimeError("roll back")
    assert stored(job) == []
    assert pushed == []
    assert [e.seq for e in publish_many(job, [("row", 1), ("row", 2)])] == [1, 2]


@pytest.mark.parametrize(
    ("bad", "error", "fragment"),
    [
        (("bad type", 1), InvalidEventType, "Invalid event type 'bad type'"),
        (("progress", 1), InvalidEventType, "reserved for the job's lifecycle"),
        (("succeeded", 1), InvalidEventType, "reserved for the job's lifecycle"),
        (("row", object()), EventDataNotSerializable, "cannot be encoded as JSON"),
        (("row", "x" * 70_000), EventDataTooLarge, "over the limit of 65536 bytes"),
        ("row", TypeError, "expected an (event type, data) pair, not 'row'"),
        (("row", 1, 2), TypeError, "expected an (event type, data) pair"),
    ],
)
def test_a_bad_event_in_the_middle_stores_nothing_and_is_named_by_its_index(
    job: Job, pushed: list[list[int]], bad: Any, error: type[Exception], fragment: str
) -> None:
    events = [("row", 0), ("row", 1), bad, ("row", 3)]
    with pytest.raises(error) as info:
        publish_many(job, events)
    assert str(info.value).startswith("events[2]: ")
    assert fragment in str(info.value)
    assert stored(job) == []
    assert pushed == []
    job.refresh_from_db()
    assert job.last_seq == 0


@override_settings(DJANGO_SSE={"MAX_BATCH_EVENTS": 3})
def test_a_batch_over_the_limit_is_refused_whole(job: Job, pushed: list[list[int]]) -> None:
    with pytest.raises(ValueError, match=r"at most 3 events \(DJANGO_SSE\['MAX_BATCH_EVENTS'\]\)"):
        publish_many(job, [("row", n) for n in range(4)])
    # An endless iterable is refused too, once it passes the limit.
    with pytest.raises(ValueError, match="split it into several publish_many"):
        publish_many(job, (("row", n) for n in itertools.count()))
    assert stored(job) == []
    assert [e.seq for e in publish_many(job, [("row", n) for n in range(3)])] == [1, 2, 3]


@override_settings(DJANGO_SSE={"PROGRESS_INTERVAL_SECONDS": 3600})
def test_pending_progress_is_written_first_and_not_returned(
    job: Job, pushed: list[list[int]]
) -> None:
    job.set_progress(1, 10)
    assert job.set_progress(2, 10) is None  # pending
    events = publish_many(job, [("row", "a"), ("row", "b")])
    assert [(e.seq, e.type) for e in events] == [(3, "row"), (4, "row")]
    assert [(seq, type_) for seq, type_, _data in stored(job)] == [
        (1, "progress"),
        (2, "progress"),
        (3, "row"),
        (4, "row"),
    ]
    assert pushed == [[1], [2, 3, 4]]


def test_a_finished_job_takes_no_batch(job: Job, pushed: list[list[int]]) -> None:
    job.succeed()
    with pytest.raises(JobFinished):
        publish_many(job, [("row", 1), ("row", 2)])
    assert [seq for seq, _type, _data in stored(job)] == [1]


@pytest.mark.asyncio
async def test_apublish_many_checks_first_then_records(job: Job, pushed: list[list[int]]) -> None:
    with pytest.raises(InvalidEventType, match=r"^events\[1\]: "):
        await apublish_many(job, [("row", 1), ("started", 2)])
    events = await apublish_many(job.pk, [("row", 1), ("row", 2)])
    assert [(e.seq, e.data) for e in events] == [(1, 1), (2, 2)]
    assert pushed == [[1, 2]]


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "1000"])
def test_a_bad_batch_limit_is_e001(value: object) -> None:
    with override_settings(DJANGO_SSE={"MAX_BATCH_EVENTS": value}):
        messages = checks.check_settings(None)
    assert [m.id for m in messages] == ["django_sse.E001"]
    assert isinstance(messages[0], Error)
    assert "DJANGO_SSE['MAX_BATCH_EVENTS'] must be a positive number" in messages[0].msg


# -- layer messages ---------------------------------------------------------------------------


def test_a_batch_is_one_message_that_reads_back_as_the_database_gives_it(
    job: Job, pushed: list[list[int]]
) -> None:
    events = publish_many(job, [("row", {"n": n, "text": "é\u2028"}) for n in range(5)])
    messages = batch_messages(events)
    assert len(messages) == 1
    assert messages[0]["type"] == BATCH_MESSAGE_TYPE
    assert (messages[0]["job"], messages[0]["seq"]) == (job.pk.hex, 1)
    parsed = parse_batch_message(messages[0], BATCH_MESSAGE_MAX_BYTES)
    assert parsed is not None
    assert parsed[0] == job.pk
    assert parsed[1] == fetch_events(job.pk, 0)


def test_batch_messages_are_split_by_size(job: Job, pushed: list[list[int]]) -> None:
    big = "x" * 60_000  # about four to a message
    events = publish_many(job, [("row", big)] * 10 + [("row", "small")])
    messages = batch_messages(events)
    assert [m["type"] for m in messages] == [BATCH_MESSAGE_TYPE] * 3
    assert [(m["seq"], len(m["events"])) for m in messages] == [(1, 4), (5, 4), (9, 3)]
    read: list[StoredEvent] = []
    for each in messages:
        assert sum(len(t) + len(d.encode()) for t, d in each["events"]) <= BATCH_MESSAGE_MAX_BYTES
        parsed = parse_batch_message(each, BATCH_MESSAGE_MAX_BYTES)
        assert parsed is not None
        read.extend(parsed[1])
    assert read == [StoredEvent(e.seq, e.type, dump_data(e.data)) for e in events]


def test_a_run_of_one_goes_in_the_single_event_shape(
    job: Job, pushed: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("django_sse.pushing.BATCH_MESSAGE_MAX_BYTES", 100)
    events = publish_many(job, [("row", "a"), ("row", "x" * 200), ("row", "b"), ("row", "c")])
    messages = batch_messages(events)
    assert [m["type"] for m in messages] == [
        "django_sse.event",
        "django_sse.event",
        BATCH_MESSAGE_TYPE,
    ]
    assert messages[1] == {
        "type": "django_sse.event",
        "job": job.pk.hex,
        "seq": 2,
        "event": "row",
        "data": json.dumps("x" * 200),
    }
    assert messages[2]["seq"] == 3


# -- the hub --------------------------------------------------------------------------------


def seqs(inbox: Inbox) -> list[int]:
    return [item.event.seq for item in inbox.items or ()]


async def wait_for_seqs(inbox: Inbox, count: int, timeout: float = 5) -> list[int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(seqs(inbox)) < count and loop.time() < deadline:
        inbox.wakeup.clear()
        try:
            await asyncio.wait_for(inbox.wakeup.wait(), max(0.01, deadline - loop.time()))
        except asyncio.TimeoutError:
            break
    return seqs(inbox)


@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_batch_message_is_handed_out_in_order_once(
    hub_cleanup: None, job: Job, pushed: list[list[int]]
) -> None:
    hub = get_hub()
    inbox = await subscribe(hub, job)
    await sync_to_async(publish_many)(job, [("row", n) for n in range(1, 6)])
    hub.on_message(batch_message(job, 1, 5))
    assert seqs(inbox) == [1, 2, 3, 4, 5]
    hub.on_message(batch_message(job, 1, 5))  # delivered twice by the layer
    hub.on_message(message(job, 5))  # and an old-shape duplicate
    await sync_to_async(publish_many)(job, [("row", n) for n in range(6, 8)])
    hub.on_message(batch_message(job, 4, 4))  # overlaps what was handed out
    assert seqs(inbox) == [1, 2, 3, 4, 5, 6, 7]
    await sync_to_async(publish)(job, "row", 8)
    hub.on_message(message(job, 8, "row"))  # single messages still work between batches
    assert seqs(inbox) == [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_batch_that_skips_ahead_fills_the_gap_first(
    hub_cleanup: None, job: Job, pushed: list[list[int]]
) -> None:
    hub = get_hub()
    inbox = await subscribe(hub, job)
    await sync_to_async(publish_many)(job, [("row", n) for n in range(1, 4)])
    await sync_to_async(publish_many)(job, [("row", n) for n in range(4, 7)])
    hub.on_message(batch_message(job, 4, 3))  # the first batch's message was lost
    assert await wait_for_seqs(inbox, 6) == [1, 2, 3, 4, 5, 6]
    assert [item.event.data for item in inbox.items or ()] == [json.dumps(n) for n in range(1, 7)]


SECRET = "s3cret-event-data"


def _bad_batches() -> list[dict[str, Any]]:
    good = ["row", '"ok"']
    base = {"type": BATCH_MESSAGE_TYPE, "job": "0" * 32, "seq": 1}
    return [
        {**base, "events": []},
        {**base, "events": [good, ["a\nb", SECRET]]},
        {**base, "events": [good, ["row", f"{SECRET}\n"]]},
        {**base, "events": [good, ("row", SECRET)]},
        {**base, "events": [good, ["row", SECRET, "x"]]},
        {**base, "events": [good, ["row", [SECRET]]]},
        {**base, "events": [good, ["row", "x" * (BATCH_MESSAGE_MAX_BYTES // 2)]] * 2},
        {**base, "events": {"0": good}},
        {**base, "seq": MAX_SEQ, "events": [good, good]},
        {**base, "seq": 0, "events": [good, good]},
        {**base, "seq": True, "events": [good, good]},
        {**base, "job": "zz", "events": [good, good]},
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", _bad_batches())
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_malformed_batch_message_is_dropped_whole_and_logged_by_its_shape(
    hub_cleanup: None, job: Job, caplog: pytest.LogCaptureFixture, bad: dict[str, Any]
) -> None:
    hub = get_hub()
    inbox = await subscribe(hub, job)
    if bad["job"] == "0" * 32:
        bad = {**bad, "job": job.pk.hex}
    with caplog.at_level(logging.WARNING, "django_sse"):
        hub.on_message(bad)
    assert "Ignored a malformed channel-layer message" in caplog.text
    assert SECRET not in caplog.text
    assert seqs(inbox) == []
    assert hub.feeds[job.pk].seq == 0


@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_published_batch_reaches_the_hub_as_one_message(
    hub_cleanup: None, job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the suite's layer (in-memory, or Redis core or pub/sub)."""
    offered: list[list[int]] = []
    original = JobFeed.offer

    def counting(feed: JobFeed, events: Any) -> None:
        events = list(events)
        offered.append([e.seq for e in events])
        original(feed, events)

    monkeypatch.setattr(JobFeed, "offer", counting)
    hub = get_hub()
    inbox = await subscribe(hub, job)
    await sync_to_async(publish_many)(job, [("row", {"n": n}) for n in range(200)])
    assert await wait_for_seqs(inbox, 200) == list(range(1, 201))
    assert offered == [list(range(1, 201))]


# -- streams --------------------------------------------------------------------------------


@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_caught_up_stream_sends_a_batch_as_one_chunk(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    # Without DirectWriteMiddleware: the stream's own task sends what its inbox holds.
    client = await open_stream(job.pk, owner_key, app=plain_application)
    assert await client.read_chunk() == b"retry: 3000\n\n"
    await sync_to_async(publish_many)(job, [("row", n) for n in range(50)])
    chunk = await client.read_chunk()
    assert chunk.count(b"\n\n") == 50
    assert client.seqs == list(range(1, 51))
    assert await client.nothing_within(0.2)
    await client.disconnect()


@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_direct_writer_sends_a_batch_as_one_chunk(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    # Behind DirectWriteMiddleware the hub writes to the server itself: one send per batch.
    client = await open_stream(job.pk, owner_key)
    assert await client.read_chunk() == b"retry: 3000\n\n"
    [writer] = await writing(job.pk)
    await sync_to_async(publish_many)(job, [("row", n) for n in range(50)])
    chunk = await client.read_chunk()
    assert chunk.count(b"\n\n") == 50
    assert client.seqs == list(range(1, 51))
    assert (writer.last_seq, writer.active) == (50, True)  # written by the hub, not the task
    await sync_to_async(publish_many)(job, [("row", n) for n in range(50, 53)])
    assert (await client.read_chunk()).count(b"\n\n") == 3
    assert client.seqs == list(range(1, 54))
    assert await client.nothing_within(0.2)
    await client.disconnect()


@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_subscriber_that_raises_on_a_batch_reads_all_of_it_from_the_database(
    hub_cleanup: None, job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        missed: list[int] = []

        def deliver(self, item: Any, now: float) -> None:
            raise AssertionError("a batch is handed out whole")

        def deliver_many(self, items: Any, now: float) -> None:
            raise RuntimeError("a bug")

        def miss(self, seq: int) -> None:
            self.missed.append(seq)

    hub = get_hub()
    before, broken = await subscribe(hub, job), Broken()
    await hub.subscribe(job.pk, broken)
    with caplog.at_level(logging.ERROR, "django_sse"):
        hub.on_message(batch_message(job, 1, 3))
    assert [item.event.seq for item in before.take()] == [1, 2, 3]
    assert broken.missed == [3]  # its stream reads up to the batch's last event
    assert f"Handing events 1 to 3 of job {job.pk} out failed." in caplog.text


@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_stream_gets_batches_live_in_order_exactly_once(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()
    for start in range(0, 300, 100):
        await sync_to_async(publish_many)(job, [("row", n) for n in range(start, start + 100)])
    await client.read_events(300)
    assert client.seqs == list(range(1, 301))
    assert [json.loads(e.data) for e in client.parser.events] == list(range(300))
    assert await client.nothing_within(0.2)
    await client.disconnect()


@pytest.mark.asyncio
@pytest.mark.parametrize("resume_at", [0, 7, 19])
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_stream_resumes_inside_a_batch(
    hub_cleanup: None, job: Job, owner_key: str, resume_at: int
) -> None:
    await sync_to_async(publish_many)(job, [("row", n) for n in range(1, 21)])
    headers = {"Last-Event-ID": str(resume_at)} if resume_at else {}
    client = await open_stream(job.pk, owner_key, headers=headers)
    await client.read_events(20 - resume_at)
    await sync_to_async(publish_many)(job, [("row", n) for n in range(21, 31)])
    await client.read_events(30 - resume_at)
    assert client.seqs == list(range(resume_at + 1, 31))
    assert [json.loads(e.data) for e in client.parser.events] == list(range(resume_at + 1, 31))
    assert await client.nothing_within(0.2)
    await client.disconnect()


@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_batch_racing_a_replay_is_sent_once(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    await sync_to_async(publish_many)(job, [("row", n) for n in range(1, 11)])
    client = await open_stream(job.pk, owner_key, headers={"Last-Event-ID": "5"})
    # Published while the stream may still be replaying: the replay and the batch message
    # overlap, and each event leaves once.
    await sync_to_async(publish_many)(job, [("row", n) for n in range(11, 21)])
    await client.read_events(15)
    assert client.seqs == list(range(6, 21))
    assert await client.nothing_within(0.2)
    await client.disconnect()

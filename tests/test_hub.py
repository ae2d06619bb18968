"""The per-process hub, driven directly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from django_sse import hub as hub_module
from django_sse import publish
from django_sse.direct import DirectWriter
from django_sse.feed import last_seqs
from django_sse.hub import get_hub
from django_sse.inbox import EncodedEvent, Inbox
from django_sse.models import Job
from tests.utils import (
    application,
    apublish_in_thread,
    db_thread_held,
    message,
    open_stream,
    plain_application,
    subscribe,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def items(subscriber: Inbox) -> list[EncodedEvent]:
    """What the inbox got (its queue is made on the first delivery)."""
    return list(subscriber.items or ())


async def next_items(subscriber: Inbox, count: int, timeout: float = 3) -> list[int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(items(subscriber)) < count:
        subscriber.wakeup.clear()
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            await asyncio.wait_for(subscriber.wakeup.wait(), remaining)
        except asyncio.TimeoutError:
            break
    return [item.event.seq for item in items(subscriber)]


async def test_a_stream_leaving_while_subscribing_does_not_break_the_others(
    hub_cleanup: None,
) -> None:
    job = await Job.objects.acreate()
    hub = get_hub()
    first = asyncio.create_task(subscribe(hub, job))
    second = asyncio.create_task(subscribe(hub, job))
    await asyncio.sleep(0)
    first.cancel()
    subscriber = await second
    assert first.cancelled()
    await sync_to_async(publish)(job, "step")
    assert await next_items(subscriber, 1) == [1]
    hub.unsubscribe(job.pk, subscriber)
    assert job.pk not in hub.feeds


@override_settings(DJANGO_SSE={"POLL_SECONDS": 60})
async def test_each_event_is_encoded_once_for_all_subscribers(hub_cleanup: None) -> None:
    job = await Job.objects.acreate()
    hub = get_hub()
    subscribers = [await subscribe(hub, job) for _ in range(3)]
    hub.on_message(message(job, 1))
    chunks = [items(s)[0].chunk for s in subscribers]
    assert chunks[0] == b"id: 1\nevent: step\ndata: 1\n\n"
    assert chunks[0] is chunks[1] is chunks[2]


@override_settings(DJANGO_SSE={"POLL_SECONDS": 60})
async def test_duplicates_and_stale_messages_are_dropped(hub_cleanup: None) -> None:
    job = await Job.objects.acreate()
    for _ in range(2):
        await sync_to_async(publish)(job, "step")
    hub = get_hub()
    subscriber = await subscribe(hub, job)  # baseline: 2
    hub.on_message(message(job, 2))
    hub.on_message(message(job, 1))
    await sync_to_async(publish)(job, "step")
    assert await next_items(subscriber, 1) == [3]
    hub.on_message(message(job, 3))
    await asyncio.sleep(0.1)
    assert [item.event.seq for item in items(subscriber)] == [3]


@override_settings(DJANGO_SSE={"POLL_SECONDS": 60})
async def test_a_gap_is_read_from_the_database_once_for_all(
    hub_cleanup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await Job.objects.acreate()
    hub = get_hub()
    subscribers = [await subscribe(hub, job) for _ in range(5)]
    monkeypatch.setattr("django_sse.pushing.push_event", lambda event: None)
    for _ in range(3):
        await sync_to_async(publish)(job, "step")
    reads = 0
    from django_sse import feed as feed_module
    from django_sse.replay import fetch_events as original

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(feed_module, "fetch_events", counting)
    hub.on_message(message(job, 3))  # 1 and 2 were dropped by the layer
    for subscriber in subscribers:
        assert await next_items(subscriber, 3) == [1, 2, 3]
    assert reads == 1


SECRET = "s3cret-event-data"


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "django_sse.event", "job": "zz", "seq": "x"},
        # Each of these would have reached encode_event() and broken the stream (or the
        # hub's receive loop, for every job of the process).
        {"type": "django_sse.event", "job": "", "seq": 1, "event": "a\nb", "data": SECRET},
        {"type": "django_sse.event", "job": "", "seq": 1, "event": "step", "data": f"{SECRET}\n"},
        {"type": "django_sse.event", "job": "", "seq": 2**63, "event": "step", "data": SECRET},
        {"type": "django_sse.event", "job": "", "seq": True, "event": "step", "data": SECRET},
        {"type": "django_sse.event", "job": "", "seq": 1, "event": "step", "data": [SECRET]},
        [SECRET],
    ],
)
async def test_malformed_layer_message_is_ignored_and_logged_by_its_shape(
    hub_cleanup: None, caplog: pytest.LogCaptureFixture, bad: Any
) -> None:
    job = await Job.objects.acreate()
    hub = get_hub()
    subscriber = await subscribe(hub, job)
    if isinstance(bad, dict) and bad["job"] == "":
        bad["job"] = job.pk.hex
    with caplog.at_level(logging.WARNING, "django_sse"):
        hub.on_message(bad)
    assert "Ignored a malformed channel-layer message" in caplog.text
    assert SECRET not in caplog.text  # its shape, never its data
    assert items(subscriber) == []
    # The job's next real event still arrives.
    await sync_to_async(publish)(job, "step")
    assert await next_items(subscriber, 1) == [1]


@override_settings(DJANGO_SSE={"POLL_SECONDS": 60})
async def test_the_receive_loop_survives_a_message_it_cannot_handle(
    hub_cleanup: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await Job.objects.acreate()
    hub = get_hub()
    subscriber = await subscribe(hub, job)
    original = hub.on_message
    calls = 0

    def first_one_breaks(message: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        original(message)

    monkeypatch.setattr(hub, "on_message", first_one_breaks)
    with caplog.at_level(logging.ERROR, "django_sse"):
        for _ in range(2):
            await sync_to_async(publish)(job, "step")
        # The first message was lost to the bug; the second makes the hub read the gap.
        assert await next_items(subscriber, 2) == [1, 2]
    assert "Handling a channel-layer message failed." in caplog.text


@override_settings(DJANGO_SSE={"POLL_SECONDS": 60, "MAX_BUFFERED_BYTES": 4 * 100})
async def test_an_inbox_over_its_budget_keeps_only_where_to_read_up_to(hub_cleanup: None) -> None:
    job = await Job.objects.acreate()
    hub = get_hub()
    slow, other = await subscribe(hub, job), await subscribe(hub, job)
    assert slow.budget.limit == 100
    hub.on_message(message(job, 1))  # 28 bytes
    hub.on_message(message(job, 2))
    hub.on_message(message(job, 3))
    assert [d.event.seq for d in items(slow)] == [1, 2, 3]
    assert slow.budget.used == 3 * len(items(slow)[0].chunk)
    assert other.take() and other.budget.used == 0
    hub.on_message(message(job, 4))  # over 100 bytes: the inbox lets go of its events
    assert items(slow) == [] and slow.budget.used == 0
    assert slow.behind == 4 and slow.wakeup.is_set()
    hub.on_message(message(job, 5))
    assert items(slow) == [] and slow.behind == 5
    assert slow.take_behind() == 5 and slow.behind == 0
    # The other stream kept up: its inbox has what came since it drained.
    assert [d.event.seq for d in other.take()] == [4, 5]


async def test_poll_finds_events_no_message_announced(
    hub_cleanup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await Job.objects.acreate()
    hub = get_hub()
    subscriber = await subscribe(hub, job)
    monkeypatch.setattr("django_sse.pushing.push_event", lambda event: None)
    await sync_to_async(publish)(job, "from-elsewhere")
    assert await next_items(subscriber, 1) == [1]  # POLL_SECONDS is 0.2 in the tests


@override_settings(DJANGO_SSE={"POLL_SECONDS": 60})
async def test_a_subscriber_that_raises_misses_the_event_alone(
    hub_cleanup: None, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        missed: list[int] = []

        def deliver(self, item: EncodedEvent, now: float) -> None:
            raise RuntimeError("a bug")

        def deliver_many(self, items: Sequence[EncodedEvent], now: float) -> None:
            raise RuntimeError("a bug")

        def miss(self, seq: int) -> None:
            self.missed.append(seq)

    job = await Job.objects.acreate()
    hub = get_hub()
    before, broken = await subscribe(hub, job), Broken()
    await hub.subscribe(job.pk, broken)
    after = await subscribe(hub, job)
    with caplog.at_level(logging.ERROR, "django_sse"):
        hub.on_message(message(job, 1))
    assert [item.event.seq for item in items(before)] == [1]
    assert [item.event.seq for item in items(after)] == [1]
    assert hub.feeds[job.pk].seq == 1
    assert f"Handing event 1 of job {job.pk} out failed." in caplog.text
    assert broken.missed == [1]  # its stream reads the event from the database


@override_settings(DJANGO_SSE={"POLL_SECONDS": 60})
@pytest.mark.parametrize("direct", [False, True], ids=["inbox", "direct-writer"])
async def test_an_event_a_subscriber_failed_to_take_reaches_its_browser_once(
    hub_cleanup: None, job: Job, owner_key: str, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    # Without the middleware the stream's inbox subscribes; with it, once caught up, its
    # direct writer does.
    app = application if direct else plain_application
    subscriber: type[Inbox | DirectWriter] = DirectWriter if direct else Inbox
    client = await open_stream(job.pk, owner_key, app=app)
    await client.read_chunk()  # retry:
    await apublish_in_thread(job, "a")
    await client.read_events(1)  # caught up: live events come through the hub from now on
    real = subscriber.deliver
    failed: list[int] = []

    def flaky(self: Any, item: EncodedEvent, now: float) -> None:  # a one-off bug
        if item.event.seq == 2 and not failed:
            failed.append(2)
            raise RuntimeError("a bug")
        real(self, item, now)

    monkeypatch.setattr(subscriber, "deliver", flaky)
    for name in ("b", "c"):
        await apublish_in_thread(job, name)
    await client.read_events(3, timeout=3)
    assert await client.nothing_within(0.5)  # and nothing twice
    assert failed == [2]
    assert client.seqs == [1, 2, 3]
    await client.disconnect()


async def test_subscribing_to_a_followed_job_is_a_set_insert(
    hub_cleanup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await Job.objects.acreate(name="followed")
    hub = get_hub()
    await subscribe(hub, job)
    layer_calls: list[str] = []
    queries: list[str] = []
    if hub._layer is not None:
        original = hub._layer.group_add

        async def counting_group_add(group: str, channel: str) -> None:
            layer_calls.append(group)
            await original(group, channel)

        monkeypatch.setattr(hub._layer, "group_add", counting_group_add)
    monkeypatch.setattr(hub_module.baselines, "run", lambda *a, **k: queries.append("q"))
    second = Inbox()
    subscribing = hub.subscribe(job.pk, second)
    # It completes without ever suspending: no layer call, no query, no wait.
    with pytest.raises(StopIteration):
        subscribing.send(None)
    assert second in hub.feeds[job.pk].subscribers
    assert layer_calls == [] and queries == []


@override_settings(DJANGO_SSE={"DB_THREADS": 1, "POLL_SECONDS": 60})
async def test_jobs_followed_together_read_their_baselines_in_one_query(
    hub_cleanup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [await Job.objects.acreate(name=f"job {n}") for n in range(5)]
    asked: list[int] = []

    def counting(job_ids: list[Any]) -> dict[Any, int]:
        asked.append(len(job_ids))
        return last_seqs(job_ids)

    monkeypatch.setattr(hub_module, "last_seqs", counting)
    async with db_thread_held():
        hub = get_hub()
        subscribing = [asyncio.ensure_future(subscribe(hub, job)) for job in jobs]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while hub_module.baselines.waiting < len(jobs):
            assert loop.time() < deadline, hub_module.baselines.waiting
            await asyncio.sleep(0.01)
    await asyncio.gather(*subscribing)
    assert asked == [len(jobs)]
    assert all(hub.feeds[job.pk].seq == 0 for job in jobs)

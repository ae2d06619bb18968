"""The per-process hub, driven directly."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from django_sse import publish
from django_sse.hub import Delivery, Subscriber, get_hub
from django_sse.models import Job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def items(subscriber: Subscriber) -> list[Delivery]:
    """What the subscriber got (its inbox is made on the first delivery)."""
    return list(subscriber.items or ())


async def next_items(subscriber: Subscriber, count: int, timeout: float = 3) -> list[int]:
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


def message(job: Job, seq: int, event: str = "step") -> dict[str, Any]:
    return {"type": "django_sse.event", "job": job.pk.hex, "seq": seq, "event": event, "data": "1"}


async def test_a_stream_leaving_while_subscribing_does_not_break_the_others(
    hub_cleanup: None,
) -> None:
    job = await Job.objects.acreate()
    hub = get_hub()
    first = asyncio.create_task(hub.subscribe(job.pk))
    second = asyncio.create_task(hub.subscribe(job.pk))
    await asyncio.sleep(0)
    first.cancel()
    subscriber = await second
    assert first.cancelled()
    await sync_to_async(publish)(job, "step")
    assert await next_items(subscriber, 1) == [1]
    hub.unsubscribe(subscriber)
    assert job.pk not in hub.feeds


@override_settings(DJANGO_SSE={"POLL_SECONDS": 60})
async def test_each_event_is_encoded_once_for_all_subscribers(hub_cleanup: None) -> None:
    job = await Job.objects.acreate()
    hub = get_hub()
    subscribers = [await hub.subscribe(job.pk) for _ in range(3)]
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
    subscriber = await hub.subscribe(job.pk)  # baseline: 2
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
    subscribers = [await hub.subscribe(job.pk) for _ in range(5)]
    monkeypatch.setattr("django_sse.signals.push_event", lambda event: None)
    for _ in range(3):
        await sync_to_async(publish)(job, "step")
    reads = 0
    from django_sse import hub as hub_module
    from django_sse.queries import fetch_events as original

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(hub_module, "fetch_events", counting)
    hub.on_message(message(job, 3))  # 1 and 2 were dropped by the layer
    for subscriber in subscribers:
        assert await next_items(subscriber, 3) == [1, 2, 3]
    assert reads == 1


async def test_malformed_layer_message_is_ignored(
    hub_cleanup: None, caplog: pytest.LogCaptureFixture
) -> None:
    hub = get_hub()
    with caplog.at_level(logging.WARNING, "django_sse"):
        hub.on_message({"type": "django_sse.event", "job": "zz", "seq": "x"})
    assert "Ignored a malformed channel-layer message" in caplog.text


async def test_poll_finds_events_no_message_announced(
    hub_cleanup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await Job.objects.acreate()
    hub = get_hub()
    subscriber = await hub.subscribe(job.pk)
    monkeypatch.setattr("django_sse.signals.push_event", lambda event: None)
    await sync_to_async(publish)(job, "from-elsewhere")
    assert await next_items(subscriber, 1) == [1]  # POLL_SECONDS is 0.2 in the tests

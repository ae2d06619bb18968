"""The stream of all of a visitor's jobs (django_sse:events)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.utils import timezone

from django_sse import publish
from django_sse.hub import get_hub
from django_sse.identity import hash_session_key
from django_sse.inbox import Inbox
from django_sse.models import Job
from django_sse.resume import base36
from tests.utils import StreamClient, make_session

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]
URL = "/sse/events/"


def received(client: StreamClient) -> list[tuple[str, int, str]]:
    """(job id, seq, type) of every event so far."""
    out = []
    for event in client.parser.events:
        payload = json.loads(event.data)
        out.append((payload["job"], payload["seq"], event.type))
    return out


async def pub(job: Job, event: str = "step", data: Any = None) -> None:
    await sync_to_async(publish)(job, event, data)


async def settle(client: StreamClient, count: int, timeout: float = 5) -> None:
    await client.read_events(count, timeout=timeout)
    assert await client.nothing_within(0.4)


# -- streaming -------------------------------------------------------------------------------


async def test_first_connection_replays_running_jobs_only(
    hub_cleanup: None, owner: User, owner_key: str
) -> None:
    running = await Job.objects.acreate(owner=owner)
    done = await Job.objects.acreate(owner=owner)
    theirs = await Job.objects.acreate(owner=await User.objects.acreate(username="them"))
    await pub(running)
    await sync_to_async(done.succeed)()
    await pub(theirs)
    client = StreamClient(URL, session_key=owner_key)
    assert await client.start() == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    await settle(client, 1)
    assert received(client) == [(str(running.pk), 1, "step")]
    assert json.loads(client.parser.events[0].data)["data"] is None
    await client.disconnect()


async def test_live_events_and_jobs_started_later(
    hub_cleanup: None, owner: User, owner_key: str
) -> None:
    first = await Job.objects.acreate(owner=owner)
    client = StreamClient(URL, session_key=owner_key)
    await client.start()
    await client.read_chunk()
    # The stream follows the first job live (the second is found by the look for new jobs).
    for _ in range(500):
        feed = get_hub().feeds.get(first.pk)
        if feed is not None and any(
            isinstance(s, Inbox) and s.wakeup.waiting for s in feed.subscribers
        ):
            break
        await asyncio.sleep(0.01)
    await pub(first, "a")
    later = await Job.objects.acreate(owner=owner)  # started after the stream opened
    await pub(later, "b")
    await sync_to_async(later.succeed)()
    await pub(first, "c")
    await settle(client, 4)
    got = received(client)
    assert [g for g in got if g[0] == str(first.pk)] == [
        (str(first.pk), 1, "a"),
        (str(first.pk), 2, "c"),
    ]
    assert [g for g in got if g[0] == str(later.pk)] == [
        (str(later.pk), 1, "b"),
        (str(later.pk), 2, "succeeded"),
    ]
    await client.disconnect()


async def test_resume_across_jobs_without_loss_or_duplicate(
    hub_cleanup: None, owner: User, owner_key: str
) -> None:
    a = await Job.objects.acreate(owner=owner)
    b = await Job.objects.acreate(owner=owner)
    old = await Job.objects.acreate(owner=owner)
    await sync_to_async(old.succeed)()  # finished before anything: never streamed
    await pub(a, "a1")
    await pub(b, "b1")
    client = StreamClient(URL, session_key=owner_key)
    await client.start()
    await settle(client, 2)
    last_id = client.parser.events[-1].last_event_id
    assert len(last_id) <= 128
    await client.disconnect()
    # While the browser is away: more events, one job ends, one starts and ends.
    await pub(a, "a2")
    await sync_to_async(b.fail)("boom")
    c = await Job.objects.acreate(owner=owner)
    await pub(c, "c1")
    await sync_to_async(c.succeed)()
    again = StreamClient(URL, session_key=owner_key, headers={"Last-Event-ID": last_id})
    await again.start()
    await settle(again, 4)
    assert sorted(received(again)) == sorted(
        [
            (str(a.pk), 2, "a2"),
            (str(b.pk), 2, "failed"),
            (str(c.pk), 1, "c1"),
            (str(c.pk), 2, "succeeded"),
        ]
    )
    # Once more from the very last id: nothing at all is sent twice.
    final_id = again.parser.events[-1].last_event_id
    await again.disconnect()
    third = StreamClient(URL, session_key=owner_key, headers={"Last-Event-ID": final_id})
    await third.start()
    await third.read_chunk()
    assert await third.nothing_within(0.5)
    assert third.parser.events == []
    await third.disconnect()


async def test_anonymous_session_sees_its_own_jobs(hub_cleanup: None) -> None:
    key = await sync_to_async(make_session)()
    other_key = await sync_to_async(make_session)()
    mine = await Job.objects.acreate(session_hash=hash_session_key(key))
    theirs = await Job.objects.acreate(session_hash=hash_session_key(other_key))
    await pub(mine)
    await pub(theirs)
    client = StreamClient(URL, session_key=key)
    await client.start()
    await settle(client, 1)
    assert received(client) == [(str(mine.pk), 1, "step")]
    await client.disconnect()


async def test_no_session_no_user_is_204(hub_cleanup: None) -> None:
    client = StreamClient(URL)
    assert await client.start() == 204


async def test_jobs_parameter_narrows(hub_cleanup: None, owner: User, owner_key: str) -> None:
    a = await Job.objects.acreate(owner=owner)
    b = await Job.objects.acreate(owner=owner)
    theirs = await Job.objects.acreate(owner=await User.objects.acreate(username="them"))
    await pub(a)
    await pub(b)
    await pub(theirs)
    client = StreamClient(f"{URL}?jobs={b.pk},{theirs.pk}", session_key=owner_key)
    await client.start()
    await settle(client, 1)
    assert received(client) == [(str(b.pk), 1, "step")]
    await client.disconnect()


@pytest.mark.parametrize("jobs", ["nope", "", ",".join(str(uuid.uuid4()) for _ in range(101))])
async def test_malformed_jobs_parameter_is_400(
    hub_cleanup: None, owner_key: str, jobs: str
) -> None:
    client = StreamClient(f"{URL}?jobs={jobs}", session_key=owner_key)
    assert await client.start() == 400
    await client.read_to_end()
    assert b"jobs must list" in client.body


async def test_invalid_resume_point_starts_afresh(
    hub_cleanup: None, owner: User, owner_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = await Job.objects.acreate(owner=owner)
    await pub(job)
    with caplog.at_level(logging.WARNING, "django_sse"):
        client = StreamClient(URL, session_key=owner_key, headers={"Last-Event-ID": "12.zz"})
        await client.start()
        await settle(client, 1)
    assert received(client) == [(str(job.pk), 1, "step")]
    assert "Ignored an invalid Last-Event-ID for a session stream" in caplog.text
    await client.disconnect()


async def test_unreachable_database_gives_a_stream_that_asks_to_retry(
    hub_cleanup: None, owner_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr("django_sse.views.identify", unreachable)
    client = StreamClient(URL, session_key=owner_key)
    assert await client.start() == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert await client.read_to_end() == b"retry: 3000\n\n"


async def test_database_lost_while_looking_for_jobs_ends_after_retry(
    hub_cleanup: None, owner_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("django_sse.session_stream.find_jobs", unreachable)
    client = StreamClient(URL, session_key=owner_key)
    assert await client.start() == 200
    assert await client.read_to_end() == b"retry: 3000\n\n"


async def test_two_jobs_with_the_same_ref_are_replayed_rather_than_skipped(
    hub_cleanup: None, owner: User, owner_key: str
) -> None:
    # Both finished an hour before the resume point's horizon; its one entry "abcdef12" could
    # be either. Skipping would lose an end: both are sent from the start instead.
    def make() -> list[Job]:
        jobs = []
        for n in (1, 2):
            job = Job.objects.create(
                id=uuid.UUID(f"abcdef12-0000-4000-8000-00000000000{n}"), owner=owner
            )
            job.start()
            job.succeed(None)
            jobs.append(job)
        an_hour_ago = timezone.now() - timedelta(hours=1)
        Job.objects.filter(owner=owner).update(created_at=an_hour_ago, finished_at=an_hour_ago)
        return jobs

    first, second = await sync_to_async(make)()
    token = f"{base36(int(time.time()))}.abcdef121"
    client = StreamClient(URL, session_key=owner_key, headers={"Last-Event-ID": token})
    await client.start()
    await settle(client, 4)
    assert sorted(received(client)) == sorted(
        (str(job.pk), seq, kind)
        for job in (first, second)
        for seq, kind in ((1, "started"), (2, "succeeded"))
    )
    await client.disconnect()

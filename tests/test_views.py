from __future__ import annotations

import asyncio
import gzip
import json
import logging
import threading
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import override_settings

from django_sse import publish
from django_sse.groups import job_group
from django_sse.hub import get_hub
from django_sse.identity import hash_session_key
from django_sse.models import Job
from django_sse.pushing import push_event
from tests.layers import group_size
from tests.utils import StreamClient, apublish_in_thread, make_session, open_stream, url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

# Long enough that the database poll cannot be what delivered an event in a test.
NO_POLL = {"POLL_SECONDS": 60}


def staff_may_watch(request: Any, job: Job) -> bool:
    return bool(request.user.is_staff)


async def subscribed(job_id: Any, count: int = 1) -> None:
    """Wait until ``count`` streams of the job are subscribed in this loop's hub (the stream
    sends its retry line first, then subscribes)."""
    hub = get_hub()
    for _ in range(200):
        feed = hub.feeds.get(job_id)
        if feed is not None and feed.ready.done() and len(feed.subscribers) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} never got {count} subscribers")


# -- the response ----------------------------------------------------------------------------


async def test_headers_retry_and_replay(hub_cleanup: None, job: Job, owner_key: str) -> None:
    for n in range(3):
        await apublish_in_thread(job, "step", {"n": n})
    client = await open_stream(job.pk, owner_key)
    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert client.headers["cache-control"] == "no-cache"
    assert client.headers["x-accel-buffering"] == "no"
    assert "connection" not in client.headers
    first = await client.read_chunk()
    assert first == b"retry: 3000\n\n"
    events = await client.read_events(3)
    # (PostgreSQL's jsonb gives back its own spacing: compare the JSON, not the text.)
    assert [(e.type, json.loads(e.data), e.last_event_id) for e in events] == [
        ("step", {"n": 0}, "1"),
        ("step", {"n": 1}, "2"),
        ("step", {"n": 2}, "3"),
    ]
    await client.disconnect()


async def test_not_compressed_under_gzip_middleware(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    await apublish_in_thread(job, "step", {"padding": "x" * 2000})
    client = await open_stream(job.pk, owner_key)
    assert client.headers.get("content-encoding") == "identity"
    await client.read_events(1)
    assert b"retry: 3000" in client.body
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(client.body)
    await client.disconnect()


@override_settings(DJANGO_SSE={"REPLAY_PAGE_SIZE": 7, **NO_POLL})
async def test_replay_in_pages_keeps_order(hub_cleanup: None, job: Job, owner_key: str) -> None:
    for n in range(30):
        await apublish_in_thread(job, "step", n)
    client = await open_stream(job.pk, owner_key)
    await client.read_events(30)
    assert client.seqs == list(range(1, 31))
    await client.disconnect()


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({"Last-Event-ID": "3"}, "", [4, 5]),
        ({}, "last_event_id=2", [3, 4, 5]),
        ({"Last-Event-ID": "4"}, "last_event_id=1", [5]),  # the header wins
        ({"Last-Event-ID": " 3 "}, "", [4, 5]),
    ],
)
async def test_resume(
    hub_cleanup: None,
    job: Job,
    owner_key: str,
    headers: dict[str, str],
    query: str,
    expected: list[int],
) -> None:
    for n in range(5):
        await apublish_in_thread(job, "step", n)
    client = await open_stream(job.pk, owner_key, headers=headers, query=query)
    await client.read_events(len(expected))
    assert client.seqs == expected
    assert await client.nothing_within(0.3)
    await client.disconnect()


@pytest.mark.parametrize(
    "bad", ["-1", "abc", "1.5", "1e3", "0x10", "9" * 40, "\uff11\uff12", "", "3;4", "\u0663"]
)
async def test_invalid_resume_id_replays_from_start_and_is_logged(
    hub_cleanup: None, job: Job, owner_key: str, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(2):
        await apublish_in_thread(job, "step", n)
    with caplog.at_level(logging.WARNING, logger="django_sse"):
        client = await open_stream(job.pk, owner_key, headers={"Last-Event-ID": bad})
        await client.read_events(2)
    assert client.seqs == [1, 2]
    if bad.strip():
        assert "Ignored an invalid Last-Event-ID" in caplog.text
    await client.disconnect()


async def test_resume_id_past_the_end_replays_from_start(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    await apublish_in_thread(job, "step", 1)
    client = await open_stream(job.pk, owner_key, headers={"Last-Event-ID": "99"})
    await client.read_events(1)
    assert client.seqs == [1]
    await client.disconnect()


# -- live delivery ---------------------------------------------------------------------------


@override_settings(DJANGO_SSE=NO_POLL)
async def test_live_events_from_a_plain_thread_arrive_promptly(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()  # retry
    sent_at: list[float] = []

    def worker() -> None:
        for n in range(5):
            sent_at.append(time.monotonic())
            publish(job.pk, "step", n)
            time.sleep(0.05)

    thread = threading.Thread(target=worker)
    thread.start()
    events = await client.read_events(5, timeout=3)
    received_at = time.monotonic()
    thread.join()
    assert [e.data for e in events] == ["0", "1", "2", "3", "4"]
    assert client.seqs == [1, 2, 3, 4, 5]
    # Far below the poll interval (60 s) and the seconds a naive async_to_sync takes.
    assert received_at - sent_at[-1] < 1.0
    await client.disconnect()


async def test_event_from_another_process_arrives_by_database_poll(
    hub_cleanup: None, job: Job, owner_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()
    # Another process's push never reaches this process's in-memory layer.
    monkeypatch.setattr("django_sse.pushing.push_event", lambda event: None)
    await apublish_in_thread(job, "from-worker", {"pid": 1})
    events = await client.read_events(1, timeout=3)  # POLL_SECONDS is 0.2 in the tests
    assert [e.type for e in events] == ["from-worker"]
    await client.disconnect()


@override_settings(DJANGO_SSE=NO_POLL)
async def test_gap_is_backfilled_from_the_database(
    hub_cleanup: None, job: Job, owner_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()
    await apublish_in_thread(job, "a")
    await client.read_events(1)
    # The layer drops #2 and #3 (a full channel, say); #4 arrives.
    monkeypatch.setattr("django_sse.pushing.push_event", lambda event: None)
    await apublish_in_thread(job, "b")
    await apublish_in_thread(job, "c")
    monkeypatch.setattr("django_sse.pushing.push_event", push_event)
    await apublish_in_thread(job, "d")
    events = await client.read_events(4, timeout=3)
    assert [e.type for e in events] == ["a", "b", "c", "d"]
    assert client.seqs == [1, 2, 3, 4]
    await client.disconnect()


@override_settings(DJANGO_SSE=NO_POLL)
async def test_duplicate_layer_messages_are_skipped(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()
    first = await apublish_in_thread(job, "a")
    await client.read_events(1)
    # The same message again (a retried send, a second path), then the next event.
    await sync_to_async(push_event)(first)
    await sync_to_async(push_event)(first)
    await apublish_in_thread(job, "b")
    await client.read_events(2)
    assert await client.nothing_within(0.3)
    assert client.seqs == [1, 2]
    await client.disconnect()


async def test_stream_ends_after_terminal_event_then_204(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()
    await sync_to_async(job.start)()
    await sync_to_async(job.succeed)({"rows": 2})
    await client.read_to_end(timeout=3)
    assert [e.type for e in client.parser.events] == ["started", "succeeded"]
    assert json.loads(client.parser.events[-1].data) == {"result": {"rows": 2}}
    again = await open_stream(job.pk, owner_key, headers={"Last-Event-ID": "2"})
    assert again.status == 204
    await again.read_to_end()
    assert again.body == b""
    # Past the last event: nothing more to send either (not the whole history again).
    past = await open_stream(job.pk, owner_key, headers={"Last-Event-ID": "99"})
    assert past.status == 204
    await past.read_to_end()
    # An older resume point still gets what it missed, then the end.
    late = await open_stream(job.pk, owner_key, headers={"Last-Event-ID": "1"})
    assert late.status == 200
    await late.read_to_end(timeout=3)
    assert late.seqs == [2]


async def test_finished_job_without_resume_point_replays_everything(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    await sync_to_async(job.start)()
    await sync_to_async(job.fail)("no disk")
    client = await open_stream(job.pk, owner_key)
    await client.read_to_end(timeout=3)
    assert [e.type for e in client.parser.events] == ["started", "failed"]


@override_settings(DJANGO_SSE={"HEARTBEAT_SECONDS": 0.2})
async def test_heartbeat(hub_cleanup: None, job: Job, owner_key: str) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()
    assert await client.read_chunk(timeout=2) == b": ping\n\n"
    assert await client.read_chunk(timeout=2) == b": ping\n\n"
    assert client.parser.events == []
    await client.disconnect()


# -- authorization ---------------------------------------------------------------------------


async def _status(job_id: object, key: str | None) -> tuple[int, bytes]:
    client = StreamClient(url(job_id), session_key=key)
    status = await client.start()
    if status != 200:
        await client.read_to_end()
        return status, client.body
    await client.read_chunk()
    await client.disconnect()
    return status, b""


async def test_authorization_matrix(hub_cleanup: None, job: Job, owner_key: str) -> None:
    other = await User.objects.acreate(username="other")
    other_key = await sync_to_async(make_session)(other)
    anonymous_key = await sync_to_async(make_session)()
    second_anonymous_key = await sync_to_async(make_session)()
    anonymous_job = await Job.objects.acreate(session_hash=hash_session_key(anonymous_key))

    assert (await _status(job.pk, owner_key))[0] == 200
    assert (await _status(anonymous_job.pk, anonymous_key))[0] == 200

    refused = [
        await _status(job.pk, other_key),
        await _status(job.pk, anonymous_key),
        await _status(job.pk, None),
        await _status(anonymous_job.pk, second_anonymous_key),
        await _status(anonymous_job.pk, None),
        await _status(anonymous_job.pk, owner_key),
        await _status(anonymous_job.pk, "x" * 32),  # a made-up session key
        await _status("00000000-0000-0000-0000-000000000000", owner_key),
        await _status("not-a-uuid", owner_key),
        await _status("' OR 1=1 --", owner_key),
    ]
    assert {status for status, _ in refused} == {404}
    # Existence is not revealed: every refusal is the same response.
    assert len({body for _, body in refused}) == 1


async def test_deleted_session_owns_no_anonymous_job(hub_cleanup: None) -> None:
    key = await sync_to_async(make_session)()
    job = await Job.objects.acreate(session_hash=hash_session_key(key))
    await Session.objects.filter(session_key=key).adelete()
    assert (await _status(job.pk, key))[0] == 404


async def test_widening_callable(hub_cleanup: None, job: Job) -> None:
    staff = await User.objects.acreate(username="staff", is_staff=True)
    staff_key = await sync_to_async(make_session)(staff)
    assert (await _status(job.pk, staff_key))[0] == 404
    with override_settings(DJANGO_SSE={"AUTHORIZE": "tests.test_views.staff_may_watch"}):
        assert (await _status(job.pk, staff_key))[0] == 200
        plain = await User.objects.acreate(username="plain")
        assert (await _status(job.pk, await sync_to_async(make_session)(plain)))[0] == 404
    with override_settings(DJANGO_SSE={"AUTHORIZE": staff_may_watch}):
        assert (await _status(job.pk, staff_key))[0] == 200


async def test_refusals_are_logged(
    hub_cleanup: None, job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="django_sse"):
        await _status(job.pk, None)
        await _status("nope", None)
    assert f"Stream refused: job='{job.pk}' user=anonymous reason=not allowed" in caplog.text
    assert "Stream refused: job='nope' user=- reason=malformed id" in caplog.text


async def test_a_job_id_cannot_forge_a_log_line(
    hub_cleanup: None, caplog: pytest.LogCaptureFixture
) -> None:
    # What a server hands Django for GET /sse/jobs/x%0A2026-12-01%2023:59:59,000%20ERROR...:
    # the path, percent-decoded.
    forged = "2026-12-01 23:59:59,000 ERROR django_sse forged"
    client = StreamClient(url("x"), path=f"/sse/jobs/x\n{forged}/events/")
    with caplog.at_level(logging.INFO, logger="django_sse"):
        assert await client.start() == 404
    messages = [r.getMessage() for r in caplog.records if r.name == "django_sse"]
    expected = "Stream refused: job='x\\n2026-12-01 23:59:59,000 ERROR django_s' user=- "
    assert messages == [expected + "reason=malformed id"]
    assert "\n" not in messages[0]


@override_settings(DJANGO_SSE={"HEARTBEAT_SECONDS": 0.2})
async def test_logout_mid_stream_ends_it(hub_cleanup: None, job: Job, owner_key: str) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()
    assert await client.read_chunk(timeout=2) == b": ping\n\n"
    # Logging out flushes the session (the key disappears from the store).
    await Session.objects.filter(session_key=owner_key).adelete()
    await client.read_to_end(timeout=3)
    assert client.ended
    assert (await _status(job.pk, owner_key))[0] == 404


@override_settings(DJANGO_SSE={"HEARTBEAT_SECONDS": 0.2})
async def test_password_change_mid_stream_ends_it(
    hub_cleanup: None, job: Job, owner: User, owner_key: str
) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()

    def change_password() -> None:
        owner.set_password("new")
        owner.save()

    await sync_to_async(change_password)()
    await client.read_to_end(timeout=3)
    assert client.ended


# -- methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_only_get_and_head(hub_cleanup: None, job: Job, owner_key: str, method: str) -> None:
    client = StreamClient(url(job.pk), session_key=owner_key, method=method)
    assert await client.start() == 405
    assert client.headers["allow"] == "GET, HEAD"


async def test_head(hub_cleanup: None, job: Job, owner_key: str) -> None:
    client = StreamClient(url(job.pk), session_key=owner_key, method="HEAD")
    assert await client.start() == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    await client.read_to_end()
    assert client.body == b""


# -- clean up and cost -----------------------------------------------------------------------


async def test_disconnect_leaves_the_group_and_stops_everything(
    hub_cleanup: None, job: Job, owner_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    layer = get_channel_layer()
    group = job_group(job.pk)
    with caplog.at_level(logging.INFO, logger="django_sse"):
        client = await open_stream(job.pk, owner_key)
        await client.read_chunk()
        await subscribed(job.pk)
        hub = get_hub()
        assert job.pk in hub.feeds
        assert await group_size(layer, group) == 1
        tasks_before = {t for t in asyncio.all_tasks() if not t.done()}
        await client.disconnect(timeout=2)  # the app has returned: CancelledError went through
        for _ in range(50):  # leaving the group runs in the hub's task, right after
            if job.pk not in hub.feeds and await group_size(layer, group) == 0:
                break
            await asyncio.sleep(0.02)
    assert job.pk not in hub.feeds
    assert await group_size(layer, group) == 0
    left = {t for t in asyncio.all_tasks() if not t.done()} - {asyncio.current_task()}
    # Only long-lived tasks of the hub and of the layer remain; nothing of the request.
    assert left <= tasks_before
    assert all("django_sse/hub.py" in repr(t) or "channels_redis" in repr(t) for t in left)
    assert not any("asgi" in repr(t) or "stream.py" in repr(t) for t in left)
    assert f"Stream closed: job={job.pk} user=" in caplog.text
    assert "reason=client went away" in caplog.text


async def test_second_stream_of_a_job_shares_the_subscription(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    first = await open_stream(job.pk, owner_key)
    second = await open_stream(job.pk, owner_key)
    await first.read_chunk()
    await second.read_chunk()
    await subscribed(job.pk, 2)
    hub = get_hub()
    assert len(hub.feeds[job.pk].subscribers) == 2
    await first.disconnect()
    assert job.pk in hub.feeds  # still watched by the second stream
    await apublish_in_thread(job, "x")
    await second.read_events(1, timeout=3)
    await second.disconnect()
    assert job.pk not in hub.feeds


async def test_open_streams_hold_no_thread_each(
    hub_cleanup: None, owner: User, owner_key: str
) -> None:
    jobs = [await Job.objects.acreate(owner=owner) for _ in range(12)]
    # One stream first, so that the process-wide threads (the database thread) exist.
    warm = await open_stream(jobs[0].pk, owner_key)
    await warm.read_chunk()
    baseline = threading.active_count()
    clients = []
    for job in jobs[1:]:
        client = await open_stream(job.pk, owner_key)
        await client.read_chunk()
        clients.append(client)
    await asyncio.sleep(0.2)
    assert threading.active_count() - baseline <= 2
    for client in [warm, *clients]:
        await client.disconnect()


# -- CORS ------------------------------------------------------------------------------------


async def test_no_cors_headers_by_default(hub_cleanup: None, job: Job, owner_key: str) -> None:
    client = await open_stream(job.pk, owner_key, headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in client.headers
    assert "Origin" in client.headers["vary"]
    await client.read_chunk()
    await client.disconnect()


@override_settings(DJANGO_SSE={"CORS_ALLOWED_ORIGINS": ["http://app.example:8001"]})
async def test_cors_for_an_allowed_origin_only(hub_cleanup: None, job: Job, owner_key: str) -> None:
    allowed = await open_stream(job.pk, owner_key, headers={"Origin": "http://app.example:8001"})
    assert allowed.headers["access-control-allow-origin"] == "http://app.example:8001"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    await allowed.read_chunk()
    await allowed.disconnect()
    other = await open_stream(job.pk, owner_key, headers={"Origin": "http://app.example:8002"})
    assert "access-control-allow-origin" not in other.headers
    await other.read_chunk()
    await other.disconnect()


# -- the database is unreachable -------------------------------------------------------------


async def test_unreachable_database_at_open_gives_a_stream_that_asks_to_retry(
    hub_cleanup: None, job: Job, owner_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    # The query reading the jobs of the streams opening together.
    monkeypatch.setattr(Job.objects, "in_bulk", unreachable)
    client = await open_stream(job.pk, owner_key)
    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert await client.read_to_end() == b"retry: 3000\n\n"


async def test_database_failure_during_replay_ends_the_stream_after_retry(
    hub_cleanup: None, job: Job, owner_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    await apublish_in_thread(job, "step")

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("django_sse.stream.fetch_page", unreachable)
    client = await open_stream(job.pk, owner_key)
    assert client.status == 200
    assert await client.read_to_end() == b"retry: 3000\n\n"

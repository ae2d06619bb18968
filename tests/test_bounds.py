"""The bounds every stream keeps (``streaming.py``), driven in-process: the per-visitor limit,
the byte budget of a connection nothing says is read, the authorization deadline during a
replay, one look for new jobs for all all-jobs streams, and resume points that are too old or
not ours. The same bounds against real servers: ``test_abuse.py``."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings

from django_sse import discovery as discovery_module
from django_sse import fragments, publish
from django_sse import session_stream as session_stream_module
from django_sse.admission import admission
from django_sse.asgi import DirectWriteMiddleware
from django_sse.hub import get_hub
from django_sse.identity import Identity
from django_sse.models import Job
from django_sse.resume import base36
from tests.utils import StreamClient, apublish_in_thread, make_session, plain_application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def job_url(job: Job, query: str = "") -> str:
    return f"/sse/jobs/{job.pk}/events/" + (f"?{query}" if query else "")


async def until(condition: Any, timeout: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "the condition was never met"
        await asyncio.sleep(0.01)


# -- the per-visitor limit -----------------------------------------------------------------


@override_settings(DJANGO_SSE={"MAX_STREAMS_PER_IDENTITY": 2})
async def test_a_visitor_past_the_limit_gets_429_and_a_place_when_a_stream_closes(
    hub_cleanup: None, job: Job, owner: User, owner_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = Identity(owner.pk, None).limit_key
    first = StreamClient(job_url(job), session_key=owner_key)
    second = StreamClient("/sse/events/", session_key=owner_key)  # every kind counts
    assert await first.start() == 200
    assert await second.start() == 200
    assert admission.open_streams(key) == 2
    third = StreamClient(job_url(job), session_key=owner_key)
    with caplog.at_level(logging.INFO, logger="django_sse"):
        assert await third.start() == 429
    assert third.headers["retry-after"] == "3"
    assert (await third.read_to_end()) == b"Too many open streams."
    assert "reason=too many streams" in caplog.text
    # Another visitor is not held back by this one.
    other = await User.objects.acreate(username="other")
    other_job = await Job.objects.acreate(owner=other)
    elsewhere = StreamClient(
        job_url(other_job), session_key=await sync_to_async(make_session)(other)
    )
    assert await elsewhere.start() == 200
    await elsewhere.disconnect()
    await first.disconnect()
    await until(lambda: admission.open_streams(key) == 1)
    again = StreamClient(job_url(job), session_key=owner_key)
    assert await again.start() == 200
    await again.disconnect()
    await second.disconnect()
    await until(lambda: admission.open_streams(key) == 0)


@override_settings(DJANGO_SSE={"MAX_STREAMS_PER_IDENTITY": 1})
async def test_a_stream_that_never_started_gives_its_place_back(
    hub_cleanup: None, job: Job, owner: User, owner_key: str
) -> None:
    key = Identity(owner.pk, None).limit_key
    client = StreamClient(job_url(job), session_key=owner_key)
    assert await client.start() == 200
    # The client leaves before reading anything: Django closes the response, whose body was
    # never iterated.
    await client.disconnect()
    await until(lambda: admission.open_streams(key) == 0)


async def test_an_anonymous_visitors_limit_is_their_sessions(hub_cleanup: None) -> None:
    key = await sync_to_async(make_session)()
    job = await Job.objects.acreate(session_hash=Identity(None, key).limit_key[8:])
    with override_settings(DJANGO_SSE={"MAX_STREAMS_PER_IDENTITY": 1}):
        first = StreamClient(job_url(job), session_key=key)
        assert await first.start() == 200
        assert await StreamClient("/sse/events/", session_key=key).start() == 429
        # Another anonymous session has a place of its own.
        fresh = StreamClient("/sse/events/", session_key=await sync_to_async(make_session)())
        assert await fresh.start() == 200
        await fresh.disconnect()
        await first.disconnect()


# -- a connection nothing says is read -----------------------------------------------------


@override_settings(DJANGO_SSE={"MAX_BUFFERED_BYTES": 2000, "POLL_SECONDS": 60})
async def test_without_the_middleware_a_connection_carries_a_bounded_number_of_bytes(
    hub_cleanup: None, job: Job, owner_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(40):
        await sync_to_async(publish)(job, "step", {"n": n, "pad": "x" * 80})
    await sync_to_async(job.succeed)()
    received: list[int] = []
    last_id: str | None = None
    connections = 0
    with caplog.at_level(logging.INFO, logger="django_sse"):
        while True:
            headers = {} if last_id is None else {"Last-Event-ID": last_id}
            client = StreamClient(
                job_url(job), session_key=owner_key, headers=headers, app=plain_application
            )
            status = await client.start()
            if status == 204:
                break
            assert status == 200
            connections += 1
            body = await client.read_to_end()
            assert len(body) <= 2000
            received += client.seqs
            last_id = client.parser.last_event_id
            assert connections < 20
    # Each connection ended after ~2,000 bytes; the browser resumed; nothing lost or repeated.
    assert received == list(range(1, 42))
    assert connections >= 3
    assert "reason=byte budget spent" in caplog.text


# -- the authorization deadline ------------------------------------------------------------


@override_settings(DJANGO_SSE={"HEARTBEAT_SECONDS": 0.3, "REPLAY_PAGE_SIZE": 5})
async def test_a_replay_stops_at_the_deadline_after_a_logout(
    hub_cleanup: None,
    job: Job,
    owner_key: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for n in range(50):
        await sync_to_async(publish)(job, "step", {"n": n})
    from django_sse import stream as stream_module
    from django_sse.replay import fetch_page as original

    gate = threading.Event()
    slow = False

    def slow_pages(*args: Any, **kwargs: Any) -> Any:
        # Each page waits for the test to let it go (bounded); after the logout, a page takes
        # a third of the deadline (a slow database, a slow client): the rest of the replay
        # outlasts it.
        assert gate.wait(5)
        if slow:
            time.sleep(0.1)
        return original(*args, **kwargs)

    monkeypatch.setattr(stream_module, "fetch_page", slow_pages)
    client = StreamClient(job_url(job), session_key=owner_key)
    with caplog.at_level(logging.INFO, logger="django_sse"):
        assert await client.start() == 200
        gate.set()
        await client.read_events(5)
        gate.clear()
        # Logged out while the replay goes on.
        await Session.objects.filter(session_key=owner_key).adelete()
        loop = asyncio.get_running_loop()
        logged_out = loop.time()
        slow = True
        gate.set()
        await client.read_to_end()
    # Pages kept coming until the deadline, then the check found the session gone.
    assert 5 <= len(client.seqs) < 50
    assert loop.time() - logged_out < 5
    assert "reason=access revoked" in caplog.text


# -- one look for new jobs -----------------------------------------------------------------


@override_settings(DJANGO_SSE={"POLL_SECONDS": 0.05, "MAX_STREAMS_PER_IDENTITY": 50})
async def test_all_jobs_streams_share_one_look_for_new_jobs(
    hub_cleanup: None, owner: User, owner_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    per_stream = shared = 0
    original_find, original_recent = (
        discovery_module.find_jobs,
        discovery_module.find_recent_jobs,
    )

    def count_find(*args: Any, **kwargs: Any) -> Any:
        nonlocal per_stream
        per_stream += 1
        return original_find(*args, **kwargs)

    def count_recent(*args: Any, **kwargs: Any) -> Any:
        nonlocal shared
        shared += 1
        return original_recent(*args, **kwargs)

    monkeypatch.setattr(session_stream_module, "find_jobs", count_find)
    monkeypatch.setattr(discovery_module, "find_recent_jobs", count_recent)
    others = [await User.objects.acreate(username=f"u{n}") for n in range(3)]
    keys = [owner_key] * 4 + [await sync_to_async(make_session)(u) for u in others]
    keys.append(await sync_to_async(make_session)())  # and an anonymous visitor
    clients = [StreamClient("/sse/events/", session_key=key) for key in keys]
    for client in clients:
        assert await client.start() == 200
        await client.read_chunk()
    discovery = get_hub().discovery
    await until(lambda: discovery.queries >= 10)
    # Each stream looked once, when it opened; then one look per poll served all eight.
    assert per_stream == len(clients)
    assert discovery.queries - 1 <= shared <= discovery.queries  # one may be under way
    # A job started now is found for each of its owner's streams.
    job = await Job.objects.acreate(owner=owner)
    await sync_to_async(publish)(job, "step")
    for client in clients[:4]:
        (event,) = await client.read_events(1)
        assert json.loads(event.data)["job"] == str(job.pk)
    for client in clients[4:]:
        assert await client.nothing_within(0.2)
    for client in clients:
        await client.disconnect()
    assert not discovery._streams()


# -- resume points of the all-jobs stream --------------------------------------------------


@pytest.mark.parametrize(
    "last_event_id",
    [
        "0",  # 1970: older than RESUME_MAX_AGE_SECONDS
        "zzzzzzzzzzzzz",  # far in the future (an OverflowError once)
        "{now}.{ref}zzzzzzzzzzzzz",  # a position past what the database holds
    ],
)
async def test_a_resume_point_too_old_or_not_ours_is_a_first_connection(
    hub_cleanup: None,
    owner: User,
    owner_key: str,
    caplog: pytest.LogCaptureFixture,
    last_event_id: str,
) -> None:
    done = await Job.objects.acreate(owner=owner)
    await sync_to_async(publish)(done, "step")
    await sync_to_async(done.succeed)()
    running = await Job.objects.acreate(owner=owner)
    await sync_to_async(publish)(running, "step")
    raw = last_event_id.format(now=base36(int(time.time())), ref=running.pk.hex[:8])
    client = StreamClient("/sse/events/", session_key=owner_key, headers={"Last-Event-ID": raw})
    with caplog.at_level(logging.INFO, logger="django_sse"):
        assert await client.start() == 200
        (event,) = await client.read_events(1)
        assert await client.nothing_within(0.3)
    # The running job from its start; the finished one counts as known.
    assert json.loads(event.data)["job"] == str(running.pk)
    assert json.loads(event.data)["seq"] == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == (0 if raw == "0" else 1)
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    await client.disconnect()


async def test_a_position_past_a_jobs_end_does_not_replay_a_finished_job(
    hub_cleanup: None, owner: User, owner_key: str
) -> None:
    done = await Job.objects.acreate(owner=owner)
    await sync_to_async(publish)(done, "step")
    await sync_to_async(done.succeed)()
    raw = f"{base36(int(time.time()))}.{done.pk.hex[:8]}{base36(99)}"
    client = StreamClient("/sse/events/", session_key=owner_key, headers={"Last-Event-ID": raw})
    assert await client.start() == 200
    await client.read_chunk()
    assert await client.nothing_within(0.3)
    await client.disconnect()


# -- htmx fragments ------------------------------------------------------------------------


async def test_fragments_are_rendered_off_the_event_loop_in_the_streams_language(
    hub_cleanup: None, job: Job, owner_key: str, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    threads: list[tuple[str, str | None]] = []
    original = fragments._render_all

    def recording(job_id: Any, events: Any, language: str | None) -> list[str]:
        threads.append((threading.current_thread().name, language))
        return original(job_id, events, language)

    monkeypatch.setattr(fragments, "_render_all", recording)
    await sync_to_async(job.start)()
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.locale.LocaleMiddleware"]
    client = StreamClient(
        job_url(job, "format=html"),
        session_key=owner_key,
        headers={"Accept-Language": "fr"},
        app=DirectWriteMiddleware(ASGIHandler()),  # made now: with LocaleMiddleware
    )
    assert await client.start() == 200
    (event,) = await client.read_events(1)
    assert "En cours" in event.data  # "Running", in the visitor's language
    assert threads and all(name.startswith("django_sse-render") for name, _ in threads)
    await client.disconnect()


# -- found by a review ---------------------------------------------------------------------


async def test_a_long_job_that_finished_is_not_replayed_on_reconnection(
    hub_cleanup: None, owner: User, owner_key: str
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    job = await Job.objects.acreate(owner=owner)
    # Created long before: once finished, the ids stop listing it.
    await Job.objects.filter(pk=job.pk).aupdate(created_at=timezone.now() - timedelta(hours=1))
    await sync_to_async(publish)(job, "step")
    client = StreamClient("/sse/events/", session_key=owner_key)
    assert await client.start() == 200
    await client.read_events(1)
    await sync_to_async(job.succeed)()
    await client.read_events(2)
    last_id = client.parser.last_event_id
    await client.disconnect()
    again = StreamClient("/sse/events/", session_key=owner_key, headers={"Last-Event-ID": last_id})
    assert await again.start() == 200
    await again.read_chunk()
    # The look for new jobs sees it (it finished within the margin): still not sent again.
    await until(lambda: get_hub().discovery.queries >= 3)
    assert await again.nothing_within(0.3)
    await again.disconnect()


@override_settings(DJANGO_SSE={"MAX_STREAMS_PER_IDENTITY": 1})
async def test_a_stream_body_dropped_unclosed_gives_its_place_back(
    hub_cleanup: None, job: Job, owner: User
) -> None:
    import gc

    from django.test import RequestFactory

    from django_sse.auth import Access
    from django_sse.stream import JobStream

    identity = Identity(owner.pk, None)
    ticket = admission.admit(identity.limit_key, 1)
    assert ticket is not None
    request = RequestFactory().get("/")
    body = JobStream(request, Access(job, owner, identity), 0, ticket).body()
    # Django dropped the response without closing it (the client left while it went back
    # through the middleware): neither close() nor the stream's end ever runs.
    del body
    gc.collect()
    await until(lambda: admission.open_streams(identity.limit_key) == 0)


async def test_a_timer_that_fires_early_is_armed_again(hub_cleanup: None, job: Job) -> None:
    from django.test import RequestFactory

    from django_sse.admission import Ticket
    from django_sse.auth import Access
    from django_sse.stream import JobStream

    stream = JobStream(
        RequestFactory().get("/"), Access(job, None, Identity(1, None)), 0, Ticket(None, "t")
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.05
    await asyncio.wait_for(stream.wait(deadline), 2)
    # As if the timer had fired a hair before the deadline: the stream waits for the same
    # deadline again, and must not wait for ever.
    await asyncio.wait_for(stream.wait(deadline), 2)


@override_settings(DJANGO_SSE={"HEARTBEAT_SECONDS": 0.2})
async def test_an_error_while_checking_the_session_ends_the_stream_in_the_log(
    hub_cleanup: None,
    job: Job,
    owner_key: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any) -> bool:
        raise RuntimeError("a custom session engine's bug")

    monkeypatch.setattr("django_sse.stream.reauthorize_stream", broken)
    client = StreamClient(job_url(job), session_key=owner_key)
    with caplog.at_level(logging.INFO, logger="django_sse"):
        assert await client.start() == 200
        await client.read_to_end(timeout=5)
    assert "reason=error (RuntimeError)" in caplog.text
    assert "Stream of job" in caplog.text and "ends on an error" in caplog.text


@override_settings(DJANGO_SSE={"HEARTBEAT_SECONDS": 0.1, "POLL_SECONDS": 60})
async def test_an_idle_stream_checks_its_session_once_per_heartbeat(
    hub_cleanup: None, job: Job, owner_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_sse import stream as stream_module
    from django_sse.auth import reauthorize_stream as original

    checks = 0

    def counting(*args: Any) -> bool:
        nonlocal checks
        checks += 1
        return original(*args)

    monkeypatch.setattr(stream_module, "reauthorize_stream", counting)
    client = StreamClient(job_url(job), session_key=owner_key)
    assert await client.start() == 200
    await client.read_chunk()
    beats = 0
    while beats < 8:
        if await client.read_chunk() == b": ping\n\n":
            beats += 1
    await client.disconnect()
    assert beats <= checks <= beats + 1


@override_settings(DJANGO_SSE={"HEARTBEAT_SECONDS": 1.0, "POLL_SECONDS": 60})
async def test_the_first_heartbeat_is_the_first_session_check_after_opening(
    hub_cleanup: None, job: Job, owner_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Authorized when it opened, the stream checks again at that check's deadline, with its
    # first heartbeat: not once at the deadline and again at a heartbeat counted from the end
    # of its replay (twice the session reads in a reconnect storm).
    from django_sse import stream as stream_module
    from django_sse.auth import reauthorize_stream as original

    checks: list[int] = []

    def counting(*args: Any) -> bool:
        checks.append(1)
        return original(*args)

    monkeypatch.setattr(stream_module, "reauthorize_stream", counting)
    await apublish_in_thread(job, "step", {"n": 1})
    client = StreamClient(job_url(job), session_key=owner_key)
    assert await client.start() == 200
    while await client.read_chunk() != b": ping\n\n":
        pass
    assert len(checks) == 1
    await client.disconnect()

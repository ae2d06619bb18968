"""``?format=html``: a job's stream with HTML fragments, for htmx's SSE extension."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.template import loader

from django_sse import publish
from django_sse.fragments import render_fragment
from django_sse.models import Job
from django_sse.replay import StoredEvent
from tests.utils import StreamClient, make_session

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def open_html(job_id: object, session_key: str, query: str = "format=html") -> StreamClient:
    client = StreamClient(f"/sse/jobs/{job_id}/events/?{query}", session_key=session_key)
    await client.start()
    return client


async def test_replay_and_live_events_carry_html_then_end(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    await sync_to_async(job.start)()
    await sync_to_async(job.set_progress)(3, 12, "Reading <orders>")
    await sync_to_async(job.flush_progress)()
    client = await open_html(job.pk, owner_key)
    events = await client.read_events(2)
    assert [(e.type, e.last_event_id) for e in events] == [("started", "1"), ("progress", "2")]
    assert 'data-status="running"' in events[0].data
    bar = events[1].data
    assert 'role="progressbar"' in bar
    assert 'aria-valuenow="3"' in bar
    assert 'aria-valuemax="12"' in bar
    assert 'aria-valuetext="3 of 12 (25%)"' in bar
    # Event data is escaped like any template variable.
    assert "Reading &lt;orders&gt;" in bar
    await sync_to_async(publish)(job, "log", {"line": "Step 1 <b>done</b>"})
    await sync_to_async(job.succeed)({"rows": 4})
    await client.read_to_end(timeout=5)
    events = client.parser.events
    assert [e.type for e in events] == ["started", "progress", "log", "succeeded", "end"]
    assert events[2].data == "<li>Step 1 &lt;b&gt;done&lt;/b&gt;</li>"
    assert 'data-status="succeeded"' in events[3].data
    # The extra "end" event has no id: a reconnection would still resume after "succeeded".
    assert events[4].data == "succeeded"
    assert events[4].last_event_id == "4"


async def test_finished_job_replayed_in_html_ends_with_end(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    await sync_to_async(job.start)()
    await sync_to_async(job.fail)("Disk full")
    client = await open_html(job.pk, owner_key)
    await client.read_to_end(timeout=5)
    events = client.parser.events
    assert [e.type for e in events] == ["started", "failed", "end"]
    assert "Disk full" in events[1].data
    assert events[2].data == "failed"


async def test_unknown_format_is_a_clear_400(hub_cleanup: None, job: Job, owner_key: str) -> None:
    client = await open_html(job.pk, owner_key, "format=xml")
    assert client.status == 400
    body = await client.read_to_end()
    assert body == b"format must be one of: json, html."


async def test_html_stream_keeps_the_same_404(hub_cleanup: None, job: Job) -> None:
    stranger = await sync_to_async(User.objects.create_user)("stranger", password="pw")
    key = await sync_to_async(make_session)(stranger)
    client = await open_html(job.pk, key)
    assert client.status == 404


async def test_event_without_a_template_of_its_own_uses_the_generic_one() -> None:
    job_id = Job(name="x").pk
    html = render_fragment(job_id, StoredEvent(7, "row_added", '{"message": "Row <7>"}'))
    assert html == "<li>Row &lt;7&gt;</li>"


async def test_an_event_is_rendered_once_for_every_stream(
    hub_cleanup: None, job: Job, owner_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_sse import fragments

    fragments.clear_fragment_cache()
    renders: list[str] = []
    real = loader.select_template

    def counting(names: list[str]) -> object:
        renders.append(names[0])
        return real(names)

    monkeypatch.setattr("django_sse.fragments.select_template", counting)
    clients = [await open_html(job.pk, owner_key) for _ in range(3)]
    for client in clients:
        await client.read_chunk()  # retry: each stream is live
    await sync_to_async(publish)(job, "log", {"line": "once"})
    for client in clients:
        events = await client.read_events(1)
        assert events[0].data == "<li>once</li>"
    assert renders == ["django_sse/htmx/log.html"]
    for client in clients:
        await client.disconnect()


@pytest.mark.parametrize("htmx_request", [None, "true"])
async def test_html_reconnection_after_the_end_gets_the_end_event_not_a_204(
    hub_cleanup: None, job: Job, owner_key: str, htmx_request: str | None
) -> None:
    """Neither htmx extension stops on a 204: a reconnection after the end gets ``end`` alone."""
    await sync_to_async(job.start)()
    await sync_to_async(job.succeed)({"rows": 1})
    headers = {"HX-Request": htmx_request} if htmx_request else None
    client = StreamClient(
        f"/sse/jobs/{job.pk}/events/?format=html&last_event_id=2",
        session_key=owner_key,
        headers=headers,
    )
    await client.start()
    assert client.status == 200
    assert "HX-Request" in client.headers.get("vary", "")
    await client.read_to_end(timeout=5)
    assert [(e.type, e.data, e.last_event_id) for e in client.parser.events] == [
        ("end", "succeeded", "")
    ]
    # The JSON stream keeps the 204 that EventSource understands.
    json_client = StreamClient(f"/sse/jobs/{job.pk}/events/?last_event_id=2", session_key=owner_key)
    await json_client.start()
    assert json_client.status == 204


async def test_html_streams_vary_on_hx_request(hub_cleanup: None, job: Job, owner_key: str) -> None:
    client = await open_html(job.pk, owner_key)
    assert client.status == 200
    assert "HX-Request" in client.headers.get("vary", "")
    await client.disconnect()

"""The JSON snapshot of a job (``django_sse:job-detail``): the stream's authorization and 404,
the fields for each status, no caching, and render-then-stream without a gap."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import AsyncClient, override_settings
from django.urls import reverse

from django_sse import publish
from django_sse.identity import hash_session_key
from django_sse.models import Job
from tests.utils import StreamClient, make_session

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def staff_may_watch(request: Any, job: Job) -> bool:
    return bool(request.user.is_staff)


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


async def fetch(
    path: str, key: str | None, method: str = "GET", headers: dict[str, str] | None = None
) -> Answer:
    """One request through Django's handler (Django's test client: the answer is not a stream)."""
    client = AsyncClient()
    if key is not None:
        client.cookies[settings.SESSION_COOKIE_NAME] = key
    response = await getattr(client, method.lower())(path, headers=headers)
    headers_out = {name.lower(): value for name, value in response.headers.items()}
    return Answer(response.status_code, headers_out, response.content)


async def snapshot(job_id: object, key: str | None, **kwargs: Any) -> Answer:
    return await fetch(f"/sse/jobs/{job_id}/", key, **kwargs)


async def stream_status(job_id: object, key: str | None) -> tuple[int, bytes]:
    """The stream's answer to the same request: its status, and its body unless it streams."""
    client = StreamClient(f"/sse/jobs/{job_id}/events/", session_key=key)
    status = await client.start()
    if status == 200:
        await client.read_chunk()
        await client.disconnect()
        return status, b""
    await client.read_to_end()
    return status, client.body


async def test_url_name() -> None:
    job_id = "0c4f6a44-29a4-4d4e-b6a2-6e1f0f6a9b10"
    assert reverse("django_sse:job-detail", args=[job_id]) == f"/sse/jobs/{job_id}/"


# -- authorization: the stream's cases, the stream's answers ----------------------------------


async def test_authorization_matrix_is_the_streams(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    other = await User.objects.acreate(username="other")
    other_key = await sync_to_async(make_session)(other)
    anonymous_key = await sync_to_async(make_session)()
    second_anonymous_key = await sync_to_async(make_session)()
    anonymous_job = await Job.objects.acreate(session_hash=hash_session_key(anonymous_key))

    allowed: list[tuple[object, str | None]] = [
        (job.pk, owner_key),
        (anonymous_job.pk, anonymous_key),
    ]
    for job_id, key in allowed:
        answer = await snapshot(job_id, key)
        assert answer.status == 200
        assert answer.json()["id"] == str(job_id)
        assert (await stream_status(job_id, key))[0] == 200

    refused_cases: list[tuple[object, str | None]] = [
        (job.pk, other_key),
        (job.pk, anonymous_key),
        (job.pk, None),
        (anonymous_job.pk, second_anonymous_key),
        (anonymous_job.pk, None),
        (anonymous_job.pk, owner_key),
        (anonymous_job.pk, "x" * 32),  # a made-up session key
        ("00000000-0000-0000-0000-000000000000", owner_key),
        ("not-a-uuid", owner_key),
        ("' OR 1=1 --", owner_key),
    ]
    bodies = set()
    for job_id, key in refused_cases:
        answer = await snapshot(job_id, key)
        assert answer.status == 404, (job_id, key)
        # The stream refuses exactly the same requests, with exactly the same answer.
        assert await stream_status(job_id, key) == (404, answer.body)
        bodies.add(answer.body)
    # Existence is not revealed: every refusal is the same response.
    assert len(bodies) == 1


async def test_deleted_session_owns_no_anonymous_job(hub_cleanup: None) -> None:
    key = await sync_to_async(make_session)()
    job = await Job.objects.acreate(session_hash=hash_session_key(key))
    assert (await snapshot(job.pk, key)).status == 200
    await Session.objects.filter(session_key=key).adelete()
    assert (await snapshot(job.pk, key)).status == 404


async def test_authorize_widens_access_as_for_the_stream(hub_cleanup: None, job: Job) -> None:
    staff = await User.objects.acreate(username="staff", is_staff=True)
    staff_key = await sync_to_async(make_session)(staff)
    plain = await User.objects.acreate(username="plain")
    plain_key = await sync_to_async(make_session)(plain)
    assert (await snapshot(job.pk, staff_key)).status == 404
    with override_settings(DJANGO_SSE={"AUTHORIZE": "tests.test_snapshot.staff_may_watch"}):
        assert (await snapshot(job.pk, staff_key)).status == 200
        assert (await stream_status(job.pk, staff_key))[0] == 200
        assert (await snapshot(job.pk, plain_key)).status == 404
    with override_settings(DJANGO_SSE={"AUTHORIZE": staff_may_watch}):
        assert (await snapshot(job.pk, staff_key)).status == 200


async def test_refusals_are_logged_without_forging_lines(
    hub_cleanup: None, job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="django_sse"):
        await snapshot(job.pk, None)
        await snapshot("nope%0Aforged", None)
    assert f"Snapshot refused: job='{job.pk}' user=anonymous" in caplog.text
    assert "Snapshot refused: job='nope\\nforged' user=anonymous" in caplog.text
    assert not any(r.getMessage().startswith("forged") for r in caplog.records)


# -- the answer ----------------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    # DjangoJSONEncoder writes UTC as "Z", which fromisoformat() reads only from Python 3.11 on.
    return datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)


def to_milliseconds(value: datetime) -> datetime:
    """What the JSON holds of a time: ISO 8601 to the millisecond (DjangoJSONEncoder)."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


async def test_pending_job(hub_cleanup: None, job: Job, owner_key: str) -> None:
    answer = await snapshot(job.pk, owner_key)
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    data = answer.json()
    created = data.pop("created_at")
    updated = data.pop("updated_at")
    assert data == {
        "id": str(job.pk),
        "name": "Report",
        "status": "pending",
        "current": 0,
        "total": None,
        "percent": None,
        "message": "",
        "cancel_requested": False,
        "last_seq": 0,
        "finished_at": None,
    }
    assert parse_time(created) == to_milliseconds(job.created_at)
    assert parse_time(updated) == to_milliseconds(job.updated_at)


async def test_running_job_with_progress(hub_cleanup: None, job: Job, owner_key: str) -> None:
    await sync_to_async(job.start)()
    await sync_to_async(job.set_progress)(5, 20, "Rows 5 of 20")
    await sync_to_async(job.flush_progress)()
    await sync_to_async(job.request_cancel)()
    data = (await snapshot(job.pk, owner_key)).json()
    fresh = await Job.objects.aget(pk=job.pk)
    assert data["status"] == "running"
    assert (data["current"], data["total"], data["percent"]) == (5, 20, 25.0)
    assert data["message"] == "Rows 5 of 20"
    assert data["cancel_requested"] is True
    assert data["last_seq"] == fresh.last_seq == 3
    assert parse_time(data["updated_at"]) == to_milliseconds(fresh.updated_at)
    assert data["finished_at"] is None
    assert "result" not in data and "error" not in data


async def test_succeeded_job_has_its_result(hub_cleanup: None, job: Job, owner_key: str) -> None:
    await sync_to_async(job.start)()
    await sync_to_async(job.succeed)({"rows": 2, "file": "report.csv"})
    data = (await snapshot(job.pk, owner_key)).json()
    fresh = await Job.objects.aget(pk=job.pk)
    assert data["status"] == "succeeded"
    assert data["result"] == {"rows": 2, "file": "report.csv"}
    assert "error" not in data
    assert fresh.finished_at is not None
    assert parse_time(data["finished_at"]) == to_milliseconds(fresh.finished_at)
    assert data["last_seq"] == 2


async def test_failed_job_has_its_error(hub_cleanup: None, job: Job, owner_key: str) -> None:
    await sync_to_async(job.start)()
    await sync_to_async(job.fail)("no disk")
    data = (await snapshot(job.pk, owner_key)).json()
    assert data["status"] == "failed"
    assert data["error"] == "no disk"
    assert "result" not in data
    assert data["finished_at"] is not None


async def test_cancelled_job_has_neither(hub_cleanup: None, job: Job, owner_key: str) -> None:
    await sync_to_async(job.start)()
    await sync_to_async(job.cancel)()
    data = (await snapshot(job.pk, owner_key)).json()
    assert data["status"] == "cancelled"
    assert "result" not in data and "error" not in data
    assert data["finished_at"] is not None


async def test_head(hub_cleanup: None, job: Job, owner_key: str) -> None:
    answer = await snapshot(job.pk, owner_key, method="HEAD")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_only_get_and_head(hub_cleanup: None, job: Job, owner_key: str, method: str) -> None:
    answer = await snapshot(job.pk, owner_key, method=method)
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, HEAD"


async def test_cors_as_for_the_stream(hub_cleanup: None, job: Job, owner_key: str) -> None:
    allowed = "https://app.example.com"
    with override_settings(DJANGO_SSE={"CORS_ALLOWED_ORIGINS": [allowed]}):
        answer = await snapshot(job.pk, owner_key, headers={"Origin": allowed})
        assert answer.headers["access-control-allow-origin"] == allowed
        assert answer.headers["access-control-allow-credentials"] == "true"
        other = await snapshot(job.pk, owner_key, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# -- render, then stream -------------------------------------------------------------------------


async def test_render_then_stream_misses_nothing_and_repeats_nothing(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    for n in range(3):
        await sync_to_async(publish)(job, "step", {"n": n})
    rendered = (await snapshot(job.pk, owner_key)).json()
    assert rendered["last_seq"] == 3
    # Published after the page rendered and before its stream opened.
    await sync_to_async(publish)(job, "step", {"n": 3})
    await sync_to_async(publish)(job, "step", {"n": 4})
    client = StreamClient(
        f"/sse/jobs/{job.pk}/events/?last_event_id={rendered['last_seq']}", session_key=owner_key
    )
    assert await client.start() == 200
    await client.read_events(2)
    # And live, after it opened.
    await sync_to_async(publish)(job, "step", {"n": 5})
    await client.read_events(3)
    await sync_to_async(job.succeed)({"rows": 6})
    await client.read_to_end()
    assert client.seqs == [4, 5, 6, 7]
    assert [json.loads(e.data) for e in client.parser.events[:3]] == [{"n": 3}, {"n": 4}, {"n": 5}]
    # A finished job: the snapshot has everything, and its stream says there is nothing more.
    final = (await snapshot(job.pk, owner_key)).json()
    assert (final["status"], final["last_seq"]) == ("succeeded", 7)
    after = StreamClient(
        f"/sse/jobs/{job.pk}/events/?last_event_id={final['last_seq']}", session_key=owner_key
    )
    assert await after.start() == 204
    await after.read_to_end()

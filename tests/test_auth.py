"""Streams opening together are authorized together: one query reads all their jobs, and each
stream gets exactly the answer it would get alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.test import override_settings

from django_sse.identity import hash_session_key
from django_sse.models import Job
from tests.utils import StreamClient, make_session, open_together, stop_all, url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

STREAMS = 12


def anonymous_jobs(count: int) -> list[tuple[str, Job]]:
    """``count`` visitors (anonymous sessions), each with a job of their own."""
    keys = [make_session() for _ in range(count)]
    return [(key, Job.objects.create(session_hash=hash_session_key(key))) for key in keys]


@pytest.fixture
def job_lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The number of job ids each query reading jobs for authorization asked for."""
    asked: list[int] = []
    original = Job.objects.in_bulk

    def counting(id_list: Any = None, **kwargs: Any) -> Any:
        asked.append(len(id_list or ()))
        return original(id_list, **kwargs)

    monkeypatch.setattr(Job.objects, "in_bulk", counting)
    yield asked


@override_settings(DJANGO_SSE={"DB_THREADS": 1, "POLL_SECONDS": 60})
async def test_streams_opening_together_read_their_jobs_in_one_query(
    hub_cleanup: None, job_lookups: list[int]
) -> None:
    visitors = await sync_to_async(anonymous_jobs)(STREAMS)
    clients = await open_together([(job.pk, key) for key, job in visitors])
    try:
        assert [client.status for client in clients] == [200] * STREAMS
        assert job_lookups == [STREAMS]
    finally:
        await stop_all(clients)


@override_settings(DJANGO_SSE={"DB_THREADS": 1, "POLL_SECONDS": 60})
async def test_a_stranger_in_the_batch_gets_the_404_and_the_owners_their_streams(
    hub_cleanup: None, job_lookups: list[int]
) -> None:
    visitors = await sync_to_async(anonymous_jobs)(3)
    stranger = await sync_to_async(make_session)()
    (key_a, job_a), (key_b, job_b), (key_c, job_c) = visitors
    missing = uuid.uuid4()
    clients = await open_together(
        [(job_a.pk, key_a), (job_b.pk, stranger), (job_c.pk, key_c), (missing, key_b)]
    )
    try:
        assert [client.status for client in clients] == [200, 404, 200, 404]
        assert job_lookups == [4]
    finally:
        await stop_all(clients)


def watch_only_the_second(request: HttpRequest, job: Job) -> bool:
    """An AUTHORIZE callable that lets strangers watch ``job_b`` and fails on ``job_a``."""
    if job.name == "a":
        raise RuntimeError("the callable's own bug")
    return job.name == "b"


@override_settings(
    DJANGO_SSE={
        "DB_THREADS": 1,
        "POLL_SECONDS": 60,
        "AUTHORIZE": "tests.test_auth.watch_only_the_second",
    }
)
async def test_a_failing_authorize_callable_fails_only_its_own_stream(
    hub_cleanup: None, job_lookups: list[int]
) -> None:
    visitors = await sync_to_async(anonymous_jobs)(3)
    stranger = await sync_to_async(make_session)()
    (key_a, job_a), (_key_b, job_b), (key_c, job_c) = visitors
    await Job.objects.filter(pk=job_a.pk).aupdate(name="a")
    await Job.objects.filter(pk=job_b.pk).aupdate(name="b")
    clients = await open_together(
        [
            (job_a.pk, stranger),  # the callable raises: a server error for this one only
            (job_a.pk, key_a),  # its owner: the callable is not asked
            (job_b.pk, stranger),  # widened by the callable
            (job_c.pk, stranger),  # refused by the callable
            (job_c.pk, key_c),
        ]
    )
    try:
        assert [client.status for client in clients] == [500, 200, 200, 404, 200]
        assert job_lookups == [3]  # five streams, three jobs, one query
    finally:
        await stop_all(clients)


@override_settings(DJANGO_SSE={"DB_THREADS": 1, "POLL_SECONDS": 60})
async def test_a_stream_opening_alone_is_authorized_at_once(
    hub_cleanup: None, job_lookups: list[int]
) -> None:
    ((key, job),) = await sync_to_async(anonymous_jobs)(1)
    client = StreamClient(url(job.pk), session_key=key)
    assert await client.start() == 200
    assert job_lookups == [1]
    await client.disconnect()

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, override_settings

from django_sse.exceptions import JobFinished
from django_sse.models import Job, JobEvent
from tests import settings as test_settings

pytestmark = pytest.mark.django_db(transaction=True)

WITHOUT_CSRF_MIDDLEWARE = [m for m in test_settings.MIDDLEWARE if "CsrfViewMiddleware" not in m]


def cancel_events(job: Job) -> list[int]:
    return list(
        JobEvent.objects.filter(job=job, type="cancel_requested").values_list("pk", flat=True)
    )


@pytest.fixture
def owner_client() -> tuple[User, Client]:
    owner = User.objects.create_user("owner", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    return owner, client


def csrf_post(client: Client, url: str) -> Any:
    client.get("/admin/login/")  # a csrf_protect view: it sets the CSRF cookie
    return client.post(url, HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)


@override_settings(MIDDLEWARE=WITHOUT_CSRF_MIDDLEWARE)
def test_cancel_needs_csrf_even_without_the_csrf_middleware(
    owner_client: tuple[User, Client],
) -> None:
    owner, client = owner_client
    job = Job.objects.create(owner=owner)
    job.start()
    assert client.post(f"/sse/jobs/{job.pk}/cancel/").status_code == 403
    assert cancel_events(job) == []
    assert csrf_post(client, f"/sse/jobs/{job.pk}/cancel/").status_code == 202
    assert len(cancel_events(job)) == 1


def test_repeated_cancel_requests_record_one_event(owner_client: tuple[User, Client]) -> None:
    owner, client = owner_client
    job = Job.objects.create(owner=owner)
    job.start()
    for _ in range(3):
        assert csrf_post(client, f"/sse/jobs/{job.pk}/cancel/").status_code == 202
    assert len(cancel_events(job)) == 1
    job.cancel()
    assert csrf_post(client, f"/sse/jobs/{job.pk}/cancel/").status_code == 409
    assert len(cancel_events(job)) == 1


def test_request_cancel_again_returns_the_first_event() -> None:
    job = Job.objects.create()
    job.start()
    first = job.request_cancel()
    requested_at = Job.objects.get(pk=job.pk).cancel_requested_at
    again = Job.objects.get(pk=job.pk).request_cancel()
    also = async_to_sync(Job.objects.get(pk=job.pk).arequest_cancel)()
    assert first.type == "cancel_requested"
    assert again.pk == also.pk == first.pk
    assert Job.objects.get(pk=job.pk).cancel_requested_at == requested_at
    assert list(job.events.values_list("type", flat=True)) == ["started", "cancel_requested"]


def test_request_cancel_of_a_job_that_ended_raises_job_finished() -> None:
    job = Job.objects.create()
    job.request_cancel()
    job.cancel()
    with pytest.raises(JobFinished):
        Job.objects.get(pk=job.pk).request_cancel()
    assert len(cancel_events(job)) == 1


def test_concurrent_cancel_requests_record_one_event() -> None:
    job = Job.objects.create()
    job.start()
    barrier = threading.Barrier(8)
    returned: list[int] = []

    def ask() -> None:
        try:
            mine = Job.objects.get(pk=job.pk)
            barrier.wait()
            returned.append(mine.request_cancel().pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cancel_events(job) == returned[:1]
    assert returned == returned[:1] * 8


def test_cancel_refusal_logs_the_untrusted_id_with_repr(
    owner_client: tuple[User, Client], caplog: pytest.LogCaptureFixture
) -> None:
    _, client = owner_client
    with caplog.at_level(logging.INFO, "django_sse"):
        response = csrf_post(client, "/sse/jobs/nope%0d%0aforged/cancel/")
    assert response.status_code == 404
    assert "Cancel refused: job='nope\\r\\nforged' user=" in caplog.text
    assert "nope\r\n" not in caplog.text

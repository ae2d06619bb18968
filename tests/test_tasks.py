from __future__ import annotations

import logging
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.test import Client, override_settings

from django_sse import publish
from django_sse.exceptions import (
    CancelRequested,
    EventDataNotSerializable,
    EventDataTooLarge,
    InvalidEventType,
)
from django_sse.models import Job, JobEvent
from django_sse.tasks import tracks_job

pytestmark = pytest.mark.django_db(transaction=True)


def types(job: Job) -> list[str]:
    return list(JobEvent.objects.filter(job=job).order_by("seq").values_list("type", flat=True))


@tracks_job
def add_rows(job: Job, count: int) -> dict[str, int]:
    for i in range(1, count + 1):
        job.raise_if_cancel_requested()
        job.set_progress(i, count)
    return {"rows": count}


@tracks_job(error_message="The export could not be written.")
def explode(job: Job) -> None:
    raise OSError("/secret/path is full")


@tracks_job(reraise=False)
def explode_quietly(job: Job) -> None:
    raise ValueError("nope")


@tracks_job
def stop_when_asked(job: Job) -> str:
    job.request_cancel()  # as a browser would, from elsewhere
    job.raise_if_cancel_requested()
    return "unreachable"


@tracks_job
async def async_rows(job: Job, count: int) -> int:
    await job.aset_progress(count, count)
    return count


def test_success_records_started_progress_succeeded() -> None:
    job = Job.objects.create(name="rows")
    assert add_rows(str(job.pk), 3) == {"rows": 3}
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert job.result == {"rows": 3}
    assert types(job)[0] == "started"
    assert types(job)[-1] == "succeeded"
    assert JobEvent.objects.get(job=job, type="succeeded").data == {"result": {"rows": 3}}


def test_failure_logs_the_traceback_and_shows_a_safe_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = Job.objects.create()
    with caplog.at_level(logging.ERROR, "django_sse"), pytest.raises(OSError):
        explode(job.pk)
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == "The export could not be written."
    event = JobEvent.objects.get(job=job, type="failed")
    assert event.data == {"error": "The export could not be written."}
    assert "/secret/path" not in str(event.data)
    assert f"Job {job.pk} failed." in caplog.text
    assert "/secret/path is full" in caplog.text  # the traceback is in the log


@tracks_job
def interrupted(job: Job) -> None:
    raise KeyboardInterrupt


def test_worker_interrupted_fails_the_job_and_lets_the_interrupt_through() -> None:
    job = Job.objects.create(name="rows")
    with pytest.raises(KeyboardInterrupt):
        interrupted(job.pk)
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == "The worker stopped before the job was done."


def test_failure_without_reraise() -> None:
    job = Job.objects.create()
    assert explode_quietly(job) is None
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "The job failed.")


def test_cancel_request_ends_the_job_as_cancelled() -> None:
    job = Job.objects.create()
    assert stop_when_asked(job) is None
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert job.cancel_requested_at is not None
    assert types(job) == ["started", "cancel_requested", "cancelled"]


def test_job_cancelled_before_its_task_ran_is_left_alone() -> None:
    job = Job.objects.create()
    job.cancel()
    assert add_rows(job, 3) is None
    assert types(job) == ["cancelled"]


def test_async_function() -> None:
    job = Job.objects.create()
    assert async_to_sync(async_rows)(job.pk, 4) == 4
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert job.result == 4


@tracks_job(error_message="The report could not be saved.")
def huge_result(job: Job) -> str:
    return "s3cret" * 100


@tracks_job(error_message="The report could not be saved.", reraise=False)
def object_result(job: Job) -> object:
    return object()


@tracks_job(error_message="The report could not be saved.")
async def async_huge_result(job: Job) -> str:
    return "s3cret" * 100


def assert_failed_safely(job: Job, caplog: pytest.LogCaptureFixture, reason: str) -> None:
    job.refresh_from_db()
    assert (job.status, job.error, job.result) == ("failed", "The report could not be saved.", None)
    assert types(job) == ["started", "failed"]
    assert f"Job {job.pk} failed: its result cannot be stored. {reason}" in caplog.text
    assert "s3cret" not in caplog.text


@override_settings(DJANGO_SSE={"MAX_DATA_BYTES": 100})
def test_result_too_large_fails_the_job_and_reaches_the_task_framework(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = Job.objects.create()
    with caplog.at_level(logging.ERROR, "django_sse"), pytest.raises(EventDataTooLarge):
        huge_result(job)
    assert_failed_safely(job, caplog, "EventDataTooLarge: Event data is 602 bytes")


def test_result_not_json_fails_the_job_and_without_reraise_returns_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = Job.objects.create()
    with caplog.at_level(logging.ERROR, "django_sse"):
        assert object_result(job) is None
    assert_failed_safely(job, caplog, "EventDataNotSerializable: ")


@override_settings(DJANGO_SSE={"MAX_DATA_BYTES": 100})
def test_async_result_too_large_fails_the_job(caplog: pytest.LogCaptureFixture) -> None:
    job = Job.objects.create()
    with caplog.at_level(logging.ERROR, "django_sse"), pytest.raises(EventDataTooLarge):
        async_to_sync(async_huge_result)(job)
    assert_failed_safely(job, caplog, "EventDataTooLarge: ")


def test_result_not_json_is_raised_by_default() -> None:
    @tracks_job
    def set_result(job: Job) -> set[int]:
        return {1, 2}

    job = Job.objects.create()
    with pytest.raises(EventDataNotSerializable):
        set_result(job)
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "The job failed.")


def test_function_that_ends_the_job_itself() -> None:
    @tracks_job
    def ends_itself(job: Job) -> None:
        job.fail("custom")

    job = Job.objects.create()
    ends_itself(job)
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "custom")


def test_cancel_requested_is_cheap(django_assert_max_num_queries: Any) -> None:
    job = Job.objects.create()
    job.start()
    with django_assert_max_num_queries(1):
        for _ in range(1000):
            assert job.cancel_requested() is False


@override_settings(DJANGO_SSE={"CANCEL_CHECK_SECONDS": 0})
def test_cancel_requested_sees_a_request_from_elsewhere() -> None:
    job = Job.objects.create()
    job.start()
    assert job.cancel_requested() is False
    Job.objects.get(pk=job.pk).request_cancel()
    assert job.cancel_requested() is True
    with pytest.raises(CancelRequested):
        job.raise_if_cancel_requested()


def test_cancel_requested_is_a_reserved_type() -> None:
    job = Job.objects.create()
    with pytest.raises(InvalidEventType, match="reserved"):
        publish(job, "cancel_requested")


# -- the cancel endpoint ---------------------------------------------------------------------


@pytest.fixture
def owner_client() -> tuple[User, Client]:
    owner = User.objects.create_user("owner", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    return owner, client


def csrf_post(client: Client, url: str) -> Any:
    client.get("/admin/login/")  # any page that sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    return client.post(url, HTTP_X_CSRFTOKEN=token)


def test_owner_can_request_cancel(owner_client: tuple[User, Client]) -> None:
    owner, client = owner_client
    job = Job.objects.create(owner=owner)
    job.start()
    response = csrf_post(client, f"/sse/jobs/{job.pk}/cancel/")
    assert response.status_code == 202
    assert response.json() == {"status": "cancel_requested"}
    job.refresh_from_db()
    assert job.cancel_requested_at is not None
    assert types(job) == ["started", "cancel_requested"]


def test_cancel_needs_csrf(owner_client: tuple[User, Client]) -> None:
    owner, client = owner_client
    job = Job.objects.create(owner=owner)
    assert client.post(f"/sse/jobs/{job.pk}/cancel/").status_code == 403
    assert types(job) == []


def test_cancel_of_finished_job_is_409(owner_client: tuple[User, Client]) -> None:
    owner, client = owner_client
    job = Job.objects.create(owner=owner)
    job.succeed()
    response = csrf_post(client, f"/sse/jobs/{job.pk}/cancel/")
    assert response.status_code == 409
    assert "already ended" in response.json()["error"]


def test_cancel_of_someone_elses_job_is_the_same_404(owner_client: tuple[User, Client]) -> None:
    _, client = owner_client
    theirs = Job.objects.create(owner=User.objects.create(username="them"))
    other = csrf_post(client, f"/sse/jobs/{theirs.pk}/cancel/")
    missing = csrf_post(client, "/sse/jobs/00000000-0000-0000-0000-000000000000/cancel/")
    malformed = csrf_post(client, "/sse/jobs/nope/cancel/")
    assert {other.status_code, missing.status_code, malformed.status_code} == {404}
    assert other.content == missing.content == malformed.content
    assert types(theirs) == []


def test_cancel_only_by_post(owner_client: tuple[User, Client]) -> None:
    owner, client = owner_client
    job = Job.objects.create(owner=owner)
    assert client.get(f"/sse/jobs/{job.pk}/cancel/").status_code == 405

"""Job.objects.get_for_request(): a page shows a job to exactly those its stream answers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import Http404, HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings

from django_sse.models import Job


def _request(user: Any, session_key: str | None = None) -> HttpRequest:
    request = RequestFactory().get("/reports/")
    if session_key is not None:
        request.COOKIES["sessionid"] = session_key
    SessionMiddleware(lambda r: HttpResponse()).process_request(request)
    request.user = user
    return request


def _anonymous_job() -> tuple[Job, str]:
    """A job of an anonymous visitor, and that visitor's session key."""
    request = _request(AnonymousUser())
    job = Job.objects.create_for_request(request, name="Export")
    key = request.session.session_key
    assert key is not None
    return job, key


def staff_may_watch(request: HttpRequest, job: Job) -> bool:
    return bool(getattr(request.user, "is_staff", False))


@pytest.fixture
def owner(db: None) -> User:
    return User.objects.create_user("owner", password="x")


@pytest.fixture
def stranger(db: None) -> User:
    return User.objects.create_user("stranger", password="x")


def _refusal(request: HttpRequest, job_id: object) -> str:
    with pytest.raises(Http404) as caught:
        Job.objects.get_for_request(request, job_id)
    return str(caught.value)


def test_the_owner_gets_the_job_by_uuid_or_string(owner: User) -> None:
    job = Job.objects.create(owner=owner)
    assert Job.objects.get_for_request(_request(owner), job.pk) == job
    assert Job.objects.get_for_request(_request(owner), str(job.pk)) == job


def test_the_session_that_started_an_anonymous_job_gets_it(db: None) -> None:
    job, key = _anonymous_job()
    assert Job.objects.get_for_request(_request(AnonymousUser(), key), job.pk) == job


def test_another_user_and_another_session_get_404(owner: User, stranger: User) -> None:
    job = Job.objects.create(owner=owner)
    _refusal(_request(stranger), job.pk)
    _refusal(_request(AnonymousUser()), job.pk)
    anonymous_job, key = _anonymous_job()
    _refusal(_request(AnonymousUser(), "not" + key), anonymous_job.pk)


@pytest.mark.parametrize(
    "job_id", ["not-a-uuid", "", "x\n2026-12-01 ERROR forged", 12, None, "0" * 33]
)
def test_missing_foreign_and_malformed_ids_get_the_same_404(
    owner: User, stranger: User, job_id: object
) -> None:
    foreign = Job.objects.create(owner=owner)
    expected = _refusal(_request(stranger), foreign.pk)
    assert _refusal(_request(stranger), uuid.uuid4()) == expected
    assert _refusal(_request(stranger), job_id) == expected
    # Nothing of the id (an untrusted value) is echoed into the message.
    assert str(foreign.pk) not in expected


def test_authorize_widens_access_as_it_does_for_the_stream(owner: User, stranger: User) -> None:
    job = Job.objects.create(owner=owner)
    stranger.is_staff = True
    stranger.save()
    _refusal(_request(stranger), job.pk)
    with override_settings(DJANGO_SSE={"AUTHORIZE": staff_may_watch}):
        assert Job.objects.get_for_request(_request(stranger), job.pk) == job
        non_staff = User.objects.create_user("plain", password="x")
        _refusal(_request(non_staff), job.pk)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_async_twin_applies_the_same_rule() -> None:
    owner = await User.objects.acreate_user("owner", password="x")
    stranger = await User.objects.acreate_user("stranger", password="x")
    job = await Job.objects.acreate(owner=owner)
    assert await Job.objects.aget_for_request(_request(owner), job.pk) == job
    with pytest.raises(Http404):
        await Job.objects.aget_for_request(_request(stranger), job.pk)
    with pytest.raises(Http404):
        await Job.objects.aget_for_request(_request(owner), "malformed")

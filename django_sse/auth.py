"""Who may read a job's stream (session-based authorization).

A job belongs to its ``owner`` (an authenticated user) or, when it has no owner, to the session
that started it. ``DJANGO_SSE["AUTHORIZE"]`` may name a callable ``(request, job) -> bool`` that
widens access (to staff, say); it cannot narrow the owner's access. Everything here is sync and
runs on the stream database thread.
"""

from __future__ import annotations

import uuid
from importlib import import_module
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from django.utils.crypto import constant_time_compare

from django_sse.conf import conf

if TYPE_CHECKING:
    from django_sse.models import Job


class Access(NamedTuple):
    job: Job
    user: Any
    session_key: str | None


def owns(job: Job, user: Any, session_key: str | None) -> bool:
    if job.owner_id is not None:
        return bool(user is not None and user.is_authenticated and user.pk == job.owner_id)
    return bool(job.session_key and session_key) and constant_time_compare(
        job.session_key, session_key or ""
    )


def can_access(request: HttpRequest, job: Job, user: Any, session_key: str | None) -> bool:
    if owns(job, user, session_key):
        return True
    widen = conf.AUTHORIZE
    return bool(widen is not None and widen(request, job))


def _current_identity(request: HttpRequest) -> tuple[Any, str | None]:
    user = getattr(request, "user", None) or AnonymousUser()
    session = getattr(request, "session", None)
    if session is None:
        return user, None
    # Reading the session loads it, which drops a key the store does not know (deleted or
    # expired): a cookie naming a dead session owns nothing.
    session.keys()
    return user, session.session_key


def authorize_stream(request: HttpRequest, job_id: uuid.UUID) -> Access | None:
    """The job and the identity that may read it, or None (missing and forbidden alike)."""
    from django_sse.models import Job

    # The identity first, for missing and forbidden jobs alike (the refusal log names the user).
    user, session_key = _current_identity(request)
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return None
    if not can_access(request, job, user, session_key):
        return None
    return Access(job, user, session_key)


def _identity_from_store(session_key: str | None) -> tuple[Any, str | None]:
    """The user and the session key as the session store knows them now."""
    if not session_key:
        return AnonymousUser(), None
    probe = HttpRequest()
    engine = import_module(settings.SESSION_ENGINE)
    probe.session = engine.SessionStore(session_key)
    # get_user() checks the session's auth hash: a password change logs the session out.
    user = get_user(probe)
    return user, probe.session.session_key


def reauthorize_stream(request: HttpRequest, job_id: uuid.UUID, session_key: str | None) -> bool:
    """Check again, from the session store, that the stream may go on (no logout, no expiry,
    no password change since it opened)."""
    from django_sse.models import Job

    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return False
    user, current_key = _identity_from_store(session_key)
    request.user = user
    return can_access(request, job, user, current_key)


def identify(request: HttpRequest) -> tuple[Any, str | None]:
    """The request's user and (existing) session key, loading both."""
    return _current_identity(request)


def same_identity(user: Any, session_key: str | None) -> bool:
    """Whether the session behind a stream of all of a session's jobs still stands for the same
    visitor (same user, or the same anonymous session)."""
    current_user, current_key = _identity_from_store(session_key)
    if getattr(user, "is_authenticated", False):
        return bool(current_user.is_authenticated and current_user.pk == user.pk)
    return current_key is not None and not current_user.is_authenticated

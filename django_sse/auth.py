"""Who may read a job's stream (session-based authorization).

A job belongs to its ``owner`` (an authenticated user) or, when it has no owner, to the session
that started it (``Job.session_hash``, see ``identity.py``). ``DJANGO_SSE["AUTHORIZE"]`` may name
a callable ``(request, job) -> bool`` that widens access (to staff, say); it cannot narrow the
owner's access. Everything here is sync and runs on the stream database thread.
"""

from __future__ import annotations

import uuid
from importlib import import_module
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest

from django_sse.conf import conf
from django_sse.identity import Identity, session_owns

if TYPE_CHECKING:
    from django_sse.models import Job


class Access(NamedTuple):
    job: Job
    user: Any
    identity: Identity


def owns(job: Job, identity: Identity) -> bool:
    if job.owner_id is not None:
        return identity.user_id is not None and identity.user_id == job.owner_id
    return session_owns(job.session_hash, identity.session_key)


def can_access(request: HttpRequest, job: Job, identity: Identity) -> bool:
    if owns(job, identity):
        return True
    widen = conf.AUTHORIZE
    return bool(widen is not None and widen(request, job))


def identify(request: HttpRequest) -> tuple[Any, Identity]:
    """The request's user and identity, loading both (call it on the stream database thread)."""
    user = getattr(request, "user", None) or AnonymousUser()
    session = getattr(request, "session", None)
    if session is None:
        return user, Identity.of(user, None)
    # Reading the session loads it, which drops a key the store does not know (deleted or
    # expired): a cookie naming a dead session owns nothing.
    session.keys()
    return user, Identity.of(user, session.session_key)


def authorize_stream(request: HttpRequest, job_id: uuid.UUID) -> Access | None:
    """The job and the identity that may read it, or None (missing and forbidden alike)."""
    from django_sse.models import Job

    # The identity first, for missing and forbidden jobs alike (the refusal log names the user).
    user, identity = identify(request)
    job = Job.objects.filter(pk=job_id).first()
    if job is None or not can_access(request, job, identity):
        return None
    return Access(job, user, identity)


def _identity_from_store(session_key: str | None) -> tuple[Any, Identity]:
    """The user and the identity as the session store knows them now."""
    if not session_key:
        return AnonymousUser(), Identity(None, None)
    probe = HttpRequest()
    engine = import_module(settings.SESSION_ENGINE)
    probe.session = engine.SessionStore(session_key)
    # get_user() checks the session's auth hash: a password change logs the session out.
    user = get_user(probe)
    return user, Identity.of(user, probe.session.session_key)


def reauthorize_stream(request: HttpRequest, job_id: uuid.UUID, identity: Identity) -> bool:
    """Check again, from the session store, that the stream may go on (no logout, no expiry,
    no password change since it opened)."""
    from django_sse.models import Job

    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return False
    user, current = _identity_from_store(identity.session_key)
    request.user = user
    return can_access(request, job, current)


def same_identity(identity: Identity) -> bool:
    """Whether the session behind a stream of all of a visitor's jobs still stands for the same
    visitor (the same user, or the same anonymous session)."""
    _user, current = _identity_from_store(identity.session_key)
    if identity.user_id is not None:
        return bool(current.user_id == identity.user_id)
    return current.session_key is not None and current.user_id is None

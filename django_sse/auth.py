"""Whether a stream may open, and go on: the job loaded, then the rule of ``access.py``.

``Access``, ``identify``, ``can_access`` and ``owns`` live in ``access.py`` (the models use them,
so they load no job) and are importable from here too. Everything here is sync and runs on the
stream database thread.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.db import DatabaseError
from django.http import HttpRequest

from django_sse.access import Access, can_access, identify, owns
from django_sse.database import Batch
from django_sse.fastpaths.sessions import preload_sessions
from django_sse.identity import Identity
from django_sse.models import Job

__all__ = [
    "Access",
    "aauthorize_stream",
    "authorize_stream",
    "authorize_streams",
    "can_access",
    "identify",
    "owns",
    "reauthorize_stream",
    "same_identity",
]


def authorize_stream(request: HttpRequest, job_id: uuid.UUID) -> Access | None:
    """The job and the identity that may read it, or None (missing and forbidden alike)."""
    # The identity first, for missing and forbidden jobs alike (the refusal log names the user).
    user, identity = identify(request)
    job = Job.objects.filter(pk=job_id).first()
    if job is None or not can_access(request, job, identity):
        return None
    return Access(job, user, identity)


def authorize_streams(
    asks: list[tuple[HttpRequest, uuid.UUID]],
) -> Sequence[Access | BaseException | None]:
    """``authorize_stream`` for streams opening together, their jobs read in one query: for
    each ``(request, job_id)``, its ``Access``, None, or the exception its own check raised (an
    ``AUTHORIZE`` callable's, a session's). A database error fails them all (raised)."""
    # Database sessions in one query; any other store loads itself below.
    preload_sessions(getattr(request, "session", None) for request, _job_id in asks)
    identities: list[tuple[Any, Identity] | BaseException] = []
    for request, _job_id in asks:
        # The identity first, for missing and forbidden jobs alike (the refusal log names the
        # user).
        try:
            identities.append(identify(request))
        except DatabaseError:
            raise
        except Exception as exc:
            identities.append(exc)
    jobs = Job.objects.in_bulk({job_id for _request, job_id in asks})
    outcomes: list[Access | BaseException | None] = []
    for (request, job_id), identified in zip(asks, identities, strict=True):
        if isinstance(identified, BaseException):
            outcomes.append(identified)
            continue
        user, identity = identified
        job = jobs.get(job_id)
        try:
            allowed = job is not None and can_access(request, job, identity)
        except DatabaseError:
            raise
        except Exception as exc:
            outcomes.append(exc)
            continue
        outcomes.append(Access(job, user, identity) if allowed and job is not None else None)
    return outcomes


# Streams opening together are authorized together (see database.Batch).
authorizations: Batch[tuple[HttpRequest, uuid.UUID], Access | None] = Batch(authorize_streams)


async def aauthorize_stream(request: HttpRequest, job_id: uuid.UUID) -> Access | None:
    """``authorize_stream`` on a stream database thread, batched with the streams opening at
    the same time."""
    return await authorizations.run((request, job_id))


def _session_probe(session_key: str | None) -> HttpRequest:
    """A request holding a fresh store for ``session_key``, not loaded yet."""
    probe = HttpRequest()
    if session_key:
        engine = import_module(settings.SESSION_ENGINE)
        probe.session = engine.SessionStore(session_key)
    return probe


def _identity_of(probe: HttpRequest) -> tuple[Any, Identity]:
    """The user and the identity as ``probe``'s session store knows them now."""
    if getattr(probe, "session", None) is None:
        return AnonymousUser(), Identity(None, None)
    # get_user() checks the session's auth hash: a password change logs the session out.
    user = get_user(probe)
    return user, Identity.of(user, probe.session.session_key)


def _identity_from_store(session_key: str | None) -> tuple[Any, Identity]:
    """The user and the identity as the session store knows them now."""
    return _identity_of(_session_probe(session_key))


def reauthorize_stream(request: HttpRequest, job_id: uuid.UUID, identity: Identity) -> bool:
    """Check again, from the session store, that the stream may go on (no logout, no expiry,
    no password change since it opened)."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return False
    user, current = _identity_from_store(identity.session_key)
    request.user = user
    return can_access(request, job, current)


def reauthorize_streams(
    asks: list[tuple[HttpRequest, uuid.UUID, Identity]],
) -> Sequence[bool | BaseException]:
    """``reauthorize_stream`` for streams whose deadlines fall together (those that opened
    together), their jobs read in one query: for each ``(request, job_id, identity)``, whether
    it may go on, or the exception its own check raised. A database error fails them all."""
    jobs = Job.objects.in_bulk({job_id for _request, job_id, _identity in asks})
    probes: list[HttpRequest | BaseException] = []
    for _request, _job_id, identity in asks:
        try:
            probes.append(_session_probe(identity.session_key))
        except Exception as exc:  # a session engine's bug fails its own stream only
            probes.append(exc)
    preload_sessions(getattr(probe, "session", None) for probe in probes)
    outcomes: list[bool | BaseException] = []
    for (request, job_id, _identity), probe in zip(asks, probes, strict=True):
        job = jobs.get(job_id)
        if job is None:
            outcomes.append(False)
            continue
        if isinstance(probe, BaseException):
            outcomes.append(probe)
            continue
        try:
            user, current = _identity_of(probe)
            request.user = user
            outcomes.append(can_access(request, job, current))
        except DatabaseError:
            raise
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def same_identity(identity: Identity) -> bool:
    """Whether the session behind a stream of all of a visitor's jobs still stands for the same
    visitor (the same user, or the same anonymous session)."""
    _user, current = _identity_from_store(identity.session_key)
    if identity.user_id is not None:
        return bool(current.user_id == identity.user_id)
    return current.session_key is not None and current.user_id is None

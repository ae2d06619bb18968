"""Who may see a job: the rule the model's lookups, the views and the streams share.

A job belongs to its ``owner`` (an authenticated user) or, when it has no owner, to the session
that started it (``Job.session_hash``, see ``identity.py``). ``DJANGO_SSE["AUTHORIZE"]`` may name
a callable ``(request, job) -> bool`` that widens access (to staff, say); it cannot narrow the
owner's access. Everything here is sync and runs on the stream database thread.

The rule takes the job as an argument and never loads one, so ``models.py`` can use it; loading
a job for a stream is ``auth.py``'s part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest

from django_sse.conf import conf
from django_sse.identity import Identity, session_owns

if TYPE_CHECKING:
    from django_sse.models import Job


class Access(NamedTuple):
    """A job a stream may read, and who reads it."""

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

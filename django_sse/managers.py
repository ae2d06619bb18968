"""How jobs are found: ``Job.objects``, the jobs of a visitor (by the rule the streams apply)
and the active and finished ones.

Nothing here imports ``models.py``: the queryset reaches its model through ``self.model``. The
events' manager, which records them, is in ``recording.py``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import sync_to_async
from django.db import models
from django.http import Http404

from django_sse.access import can_access, identify
from django_sse.identity import hash_session_key, session_hashes
from django_sse.lifecycle import ACTIVE_STATUSES, FINISHED_STATUSES

if TYPE_CHECKING:
    from django.http import HttpRequest

    from django_sse.models import Job


# One message for every refusal of get_for_request(): a stranger learns nothing from it.
_NO_JOB = "No job matches the given query."


class JobQuerySet(models.QuerySet["Job"]):
    def create_for_request(self, request: HttpRequest, **fields: Any) -> Job:
        """Create a job owned by the request's user or, for an anonymous visitor, by the
        request's session (saved first if it has no key yet)."""
        user = request.user
        if user.is_authenticated:
            return self.create(owner=user, **fields)
        if request.session.session_key is None:
            request.session.save()
        return self.create(
            session_hash=hash_session_key(request.session.session_key or ""), **fields
        )

    async def acreate_for_request(self, request: HttpRequest, **fields: Any) -> Job:
        """Async twin of :meth:`create_for_request`."""
        user = await request.auser()
        if user.is_authenticated:
            return await self.acreate(owner=user, **fields)
        if request.session.session_key is None:
            await request.session.asave()
        session_hash = hash_session_key(request.session.session_key or "")
        return await self.acreate(session_hash=session_hash, **fields)

    def for_session_key(self, session_key: str | None) -> JobQuerySet:
        """The jobs of the anonymous visitor whose session has this key."""
        if not session_key:
            return cast(JobQuerySet, self.none())
        hashes = session_hashes(session_key)
        return cast(JobQuerySet, self.filter(owner__isnull=True, session_hash__in=hashes))

    def for_request(self, request: HttpRequest) -> JobQuerySet:
        """The visitor's jobs: the user's, or an anonymous visitor's session's (the rule the
        streams apply, so a page listing these never links to a stream that answers 404)."""
        user = request.user
        if user.is_authenticated:
            return cast(JobQuerySet, self.filter(owner=user))
        return self.for_session_key(request.session.session_key)

    def get_for_request(self, request: HttpRequest, job_id: object) -> Job:
        """The job ``job_id`` if the request may see it (its user or anonymous session owns
        it, or ``DJANGO_SSE["AUTHORIZE"]`` admits it), else ``Http404``: the same 404 for a job
        of somebody else, a missing job and a malformed id, so the answer tells a stranger
        nothing. The rule the streams apply: a page fetched with this shows exactly the jobs
        whose stream answers."""
        try:
            pk = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
        except ValueError:
            raise Http404(_NO_JOB) from None
        job = cast("Job | None", self.filter(pk=pk).first())
        if job is not None:
            _user, identity = identify(request)
            if can_access(request, job, identity):
                return job
        raise Http404(_NO_JOB)

    async def aget_for_request(self, request: HttpRequest, job_id: object) -> Job:
        """Async twin of :meth:`get_for_request`."""
        return await sync_to_async(self.get_for_request)(request, job_id)

    def active(self) -> JobQuerySet:
        return cast(JobQuerySet, self.filter(status__in=ACTIVE_STATUSES))

    def finished(self) -> JobQuerySet:
        return cast(JobQuerySet, self.filter(status__in=FINISHED_STATUSES))

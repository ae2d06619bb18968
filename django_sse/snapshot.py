"""A job's state as JSON (``django_sse:job-detail``), for pages that render before they stream
and for clients that poll where Server-Sent Events are blocked.

The answer carries the job's ``last_seq``, read in the same row as the state it describes (the
two change together, in the ``UPDATE`` of each publish): a client that renders the snapshot and
then opens the stream with ``?last_event_id=<last_seq>`` gets every later event exactly once.
Authorization is the stream's (``Job.objects.get_for_request``): the same 404 for a missing job,
a malformed id and somebody else's job.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from django_sse.models import Job
from django_sse.responses import allow_origin, describe_user, untrusted

logger = logging.getLogger("django_sse")


def job_snapshot(job: Job) -> dict[str, Any]:
    """The fields of the JSON answer (times as ``datetime``, for ``DjangoJSONEncoder``)."""
    snapshot: dict[str, Any] = {
        "id": job.pk,
        "name": job.name,
        "status": job.status,
        "current": job.current,
        "total": job.total,
        "percent": job.percent,
        "message": job.message,
        "cancel_requested": job.cancel_requested_at is not None,
        "last_seq": job.last_seq,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
    }
    # Plain strings: django-stubs types TextChoices members as (value, label) tuples.
    if job.status == "succeeded":
        snapshot["result"] = job.result
    elif job.status == "failed":
        snapshot["error"] = job.error
    return snapshot


# Safe methods only (CSRF has nothing to protect; POST and friends get a 405, not a 403).
@csrf_exempt
@require_safe
def job_detail(request: HttpRequest, job_id: str) -> HttpResponseBase:
    """The job's state as JSON, to its owner (or whom ``AUTHORIZE`` admits), never cached."""
    try:
        job = Job.objects.get_for_request(request, job_id)
    except Http404:
        logger.info(
            "Snapshot refused: job=%s user=%s",
            untrusted(job_id),
            describe_user(getattr(request, "user", None)),
        )
        raise
    response = JsonResponse(job_snapshot(job), encoder=DjangoJSONEncoder)
    response["Cache-Control"] = "no-store"
    return allow_origin(request, response)

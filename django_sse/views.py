"""The SSE endpoint of one job."""

from __future__ import annotations

import logging
import uuid

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from django_sse.auth import authorize_stream
from django_sse.database import run_in_db_thread
from django_sse.stream import JobStream, describe_user
from django_sse.validation import parse_resume_id

logger = logging.getLogger("django_sse")

CONTENT_TYPE = "text/event-stream; charset=utf-8"
# Longer values are not logged whole: they are untrusted input.
_LOG_VALUE_CHARS = 40


def _stream_headers(response: HttpResponseBase) -> HttpResponseBase:
    response["Cache-Control"] = "no-cache"
    # nginx: pass each event through at once instead of buffering the response.
    response["X-Accel-Buffering"] = "no"
    # GZipMiddleware (and most proxies) leave a response alone once it names an encoding.
    response["Content-Encoding"] = "identity"
    return response


def _refuse(request: HttpRequest, job_id: str, reason: str) -> Http404:
    logger.info(
        "Stream refused: job=%s user=%s reason=%s",
        job_id[:_LOG_VALUE_CHARS],
        describe_user(getattr(request, "user", None)) if reason == "not allowed" else "-",
        reason,
    )
    # The same 404 for a missing job, a malformed id and somebody else's job.
    return Http404("No job found.")


def _resume_point(request: HttpRequest, job_id: uuid.UUID) -> int:
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.GET.get("last_event_id")
    if raw is None:
        return 0
    resume = parse_resume_id(raw)
    if resume is None:
        logger.warning(
            "Ignored an invalid Last-Event-ID for job %s: %r; replaying from the start.",
            job_id,
            raw[:_LOG_VALUE_CHARS],
        )
        return 0
    return resume


# Safe methods only, so CSRF has nothing to protect; exempting it lets POST and friends get the
# 405 they deserve instead of a CSRF 403.
@csrf_exempt
@require_safe
async def job_events(request: HttpRequest, job_id: str) -> HttpResponseBase:
    """Stream the events of one job to its owner as Server-Sent Events."""
    try:
        job_uuid = uuid.UUID(job_id)
    except ValueError:
        raise _refuse(request, job_id, "malformed id") from None
    access = await run_in_db_thread(authorize_stream, request, job_uuid)
    if access is None:
        raise _refuse(request, job_id, "not allowed")
    job = access.job
    resume = _resume_point(request, job_uuid)
    if resume > job.last_seq:
        logger.warning(
            "Last-Event-ID %d is past the last event (%d) of job %s; replaying from the start.",
            resume,
            job.last_seq,
            job_uuid,
        )
        resume = 0
    if job.is_finished and resume >= job.last_seq:
        # The documented way to tell EventSource to stop reconnecting.
        return HttpResponse(status=204)
    if request.method == "HEAD":
        return _stream_headers(HttpResponse(content_type=CONTENT_TYPE))
    stream = JobStream(request, access, resume)
    return _stream_headers(StreamingHttpResponse(stream.events(), content_type=CONTENT_TYPE))

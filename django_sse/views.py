"""The SSE endpoint of one job."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

from django.db import DatabaseError
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from django_sse.auth import authorize_stream, identify
from django_sse.conf import conf
from django_sse.database import run_in_db_thread
from django_sse.exceptions import JobFinished
from django_sse.fragments import FORMATS, FragmentStream
from django_sse.resume import decode_resume_point
from django_sse.session_stream import SessionStream, parse_only
from django_sse.sse import encode_retry
from django_sse.stream import JobStream, describe_user
from django_sse.validation import parse_resume_id

logger = logging.getLogger("django_sse")

CONTENT_TYPE = "text/event-stream; charset=utf-8"
# Longer values are not logged whole: they are untrusted input.
_LOG_VALUE_CHARS = 40


def _stream_headers(response: HttpResponseBase) -> HttpResponseBase:
    response["Content-Type"] = CONTENT_TYPE
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


def _raw_resume_point(request: HttpRequest) -> str | None:
    """The browser's ``Last-Event-ID`` header (sent on reconnection), else the
    ``last_event_id`` query parameter (a first connection cannot send headers)."""
    raw = request.headers.get("Last-Event-ID")
    return request.GET.get("last_event_id") if raw is None else raw


def _job_uuid(request: HttpRequest, job_id: str) -> uuid.UUID:
    """The job id of the URL, or the common 404."""
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise _refuse(request, job_id, "malformed id") from None


def _resume_point(request: HttpRequest, job_id: uuid.UUID) -> int:
    raw = _raw_resume_point(request)
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
    """Stream the events of one job to its owner as Server-Sent Events (their data as JSON,
    or with ``?format=html`` as HTML fragments for htmx, see ``fragments.py``)."""
    output = request.GET.get("format", "json")
    if output not in FORMATS:
        return HttpResponse(
            f"format must be one of: {', '.join(FORMATS)}.",
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    job_uuid = _job_uuid(request, job_id)
    try:
        access = await run_in_db_thread(authorize_stream, request, job_uuid)
    except DatabaseError as exc:
        # A 5xx would make EventSource give up for good; an empty 200 stream makes it come
        # back after the retry delay. Nothing about the job is revealed.
        logger.warning(
            "Stream of job %s deferred: the database is unreachable (%r); the browser will "
            "retry in %d ms.",
            job_uuid,
            exc,
            conf.RETRY_MILLISECONDS,
        )
        return _allow_origin(request, _stream_headers(StreamingHttpResponse(_retry_later())))
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
        return _allow_origin(request, HttpResponse(status=204))
    if request.method == "HEAD":
        return _allow_origin(request, _stream_headers(HttpResponse()))
    stream_class = FragmentStream if output == "html" else JobStream
    stream = stream_class(request, access, resume)
    return _allow_origin(request, _stream_headers(StreamingHttpResponse(stream.body())))


async def _retry_later() -> AsyncIterator[bytes]:
    yield encode_retry(conf.RETRY_MILLISECONDS)


def _allow_origin(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """CORS for the origins in ``CORS_ALLOWED_ORIGINS`` (with credentials: the stream is
    authorized by the session cookie). Other origins get no CORS header and cannot read it."""
    patch_vary_headers(response, ["Origin"])
    origin = request.headers.get("Origin")
    if origin and origin in conf.CORS_ALLOWED_ORIGINS:
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Credentials"] = "true"
    return response


@require_POST
def job_cancel(request: HttpRequest, job_id: str) -> HttpResponse:
    """Ask a job to stop (CSRF-protected; same authorization and same 404 as the stream).

    ``202`` with ``{"status": "cancel_requested"}``, or ``409`` with ``{"error": ...}`` when
    the job has already ended.
    """
    job_uuid = _job_uuid(request, job_id)
    access = authorize_stream(request, job_uuid)
    if access is None:
        raise _refuse(request, job_id, "not allowed")
    try:
        access.job.request_cancel()
    except JobFinished:
        return JsonResponse({"error": gettext("The job has already ended.")}, status=409)
    logger.info("Cancel requested: job=%s user=%s", job_uuid, describe_user(access.user))
    return JsonResponse({"status": "cancel_requested"}, status=202)


@csrf_exempt
@require_safe
async def session_events(request: HttpRequest) -> HttpResponseBase:
    """Stream the events of all of the visitor's jobs (``?jobs=`` narrows them)."""
    try:
        only = parse_only(request.GET.get("jobs"))
    except ValueError as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    try:
        user, session_key = await run_in_db_thread(identify, request)
    except DatabaseError as exc:
        logger.warning("Session stream deferred: the database is unreachable (%r).", exc)
        return _allow_origin(request, _stream_headers(StreamingHttpResponse(_retry_later())))
    if not user.is_authenticated and session_key is None:
        # No user and no session: no job can be theirs, now or later. Stop reconnecting.
        return _allow_origin(request, HttpResponse(status=204))
    raw = _raw_resume_point(request)
    resume = decode_resume_point(raw)
    if raw is not None and resume is None:
        logger.warning(
            "Ignored an invalid Last-Event-ID for a session stream: %r; starting afresh.",
            raw[:_LOG_VALUE_CHARS],
        )
    if request.method == "HEAD":
        return _allow_origin(request, _stream_headers(HttpResponse()))
    stream = SessionStream(request, user, session_key, only, resume)
    return _allow_origin(request, _stream_headers(StreamingHttpResponse(stream.body())))

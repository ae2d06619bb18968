"""The SSE endpoints: one job's stream, the stream of all of a visitor's jobs, and cancel.

Each view reads top to bottom as guard clauses (method, format, authorization, the per-visitor
limit, the resume point) and then hands the request to a stream (``stream.py``,
``fragments.py``, ``session_stream.py``). Values taken from the request are logged with ``%r``
and cut short: a job id or a ``Last-Event-ID`` holding a line break must not forge log lines.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from django.db import DatabaseError
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
)
from django.utils.translation import gettext
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST, require_safe

from django_sse import metrics
from django_sse.admission import Ticket, admission
from django_sse.auth import aauthorize_stream, authorize_stream, identify
from django_sse.conf import conf
from django_sse.database import run_in_db_thread
from django_sse.exceptions import JobFinished
from django_sse.fragments import FORMATS, FragmentStream
from django_sse.identity import Identity
from django_sse.responses import (
    LOG_VALUE_CHARS,
    allow_origin,
    describe_user,
    ended_body,
    html_response,
    retry_later_body,
    stream_headers,
    stream_response,
    untrusted,
)
from django_sse.resume import (
    InvalidResumePoint,
    ResumePoint,
    decode_job_resume_point,
    decode_resume_point,
)
from django_sse.session_stream import SessionStream, parse_only
from django_sse.sink import request_sink
from django_sse.stream import JobStream

logger = logging.getLogger("django_sse")


def _refuse(request: HttpRequest, job_id: str, reason: str) -> Http404:
    metrics.stream_refused(reason)
    logger.info(
        "Stream refused: job=%s user=%s reason=%s",
        untrusted(job_id),
        describe_user(getattr(request, "user", None)) if reason == "not allowed" else "-",
        reason,
    )
    # The same 404 for a missing job, a malformed id and somebody else's job.
    return Http404("No job found.")


def _admit(identity: Identity, what: str) -> Ticket | HttpResponse:
    """An admission ticket for one more stream of this visitor, or the ``429`` refusing it.

    ``429`` (not ``503``, not a ``200`` that ends at once): ``EventSource`` treats any status
    but ``200`` as final and stops, where a ``200`` would make it reconnect after the retry
    delay, again and again. ``Retry-After`` tells clients that do retry (ours) when to.
    """
    ticket = admission.admit(identity.limit_key, conf.MAX_STREAMS_PER_IDENTITY)
    if ticket is not None:
        return ticket
    metrics.stream_refused("too many streams")
    logger.info(
        "Stream refused: %s user=%s reason=too many streams (%d open)",
        what,
        identity.label,
        conf.MAX_STREAMS_PER_IDENTITY,
    )
    refused = HttpResponse(
        gettext("Too many open streams."), status=429, content_type="text/plain; charset=utf-8"
    )
    refused["Retry-After"] = str(max(1, round(conf.RETRY_MILLISECONDS / 1000)))
    return refused


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


def _job_resume_point(request: HttpRequest, job_id: uuid.UUID) -> int:
    """The resume point of a job's stream: 0 (from the start) when there is none, or when it
    cannot be one we sent (one WARNING)."""
    raw = _raw_resume_point(request)
    try:
        return decode_job_resume_point(raw)
    except InvalidResumePoint:
        logger.warning(
            "Ignored an invalid Last-Event-ID for job %s: %s; replaying from the start.",
            job_id,
            untrusted(raw or ""),
        )
        return 0


# Safe methods only, so CSRF has nothing to protect; exempting it lets POST and friends get the
# 405 they deserve instead of a CSRF 403.
@csrf_exempt
@require_safe
async def job_events(request: HttpRequest, job_id: str) -> HttpResponseBase:
    """Stream the events of one job to its owner as Server-Sent Events (their data as JSON,
    or with ``?format=html`` as HTML fragments for htmx, see ``fragments.py``)."""
    output = request.GET.get("format", "json")
    if output not in FORMATS:
        metrics.stream_refused("bad request")
        return HttpResponse(
            f"format must be one of: {', '.join(FORMATS)}.",
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    job_uuid = _job_uuid(request, job_id)
    checked_at = asyncio.get_running_loop().time()
    try:
        access = await aauthorize_stream(request, job_uuid)
    except DatabaseError as exc:
        # A 5xx would make EventSource give up for good; an empty 200 stream makes it come
        # back after the retry delay. Nothing about the job is revealed.
        metrics.stream_refused("database unavailable")
        logger.warning(
            "Stream of job %s deferred: the database is unreachable (%r); the browser will "
            "retry in %d ms.",
            job_uuid,
            exc,
            conf.RETRY_MILLISECONDS,
        )
        return stream_response(request, retry_later_body())
    if access is None:
        raise _refuse(request, job_id, "not allowed")
    job = access.job
    resume = _job_resume_point(request, job_uuid)
    if job.is_finished and resume >= job.last_seq:
        metrics.stream_refused("job finished")
        if output == "html":
            # Neither htmx extension stops on a 204 (htmx 4's hx-sse retries for as long as
            # the page is open, htmx 2's reopens from the page's first id): they stop on the
            # "end" event, so a reconnection after the end gets that alone.
            return html_response(stream_response(request, ended_body(job.status)))
        # The documented way to tell EventSource to stop reconnecting (a resume point past
        # the last event included: there is nothing more to send either way).
        return allow_origin(request, HttpResponse(status=204))
    if resume > job.last_seq:
        logger.warning(
            "Last-Event-ID %d is past the last event (%d) of job %s; replaying from the start.",
            resume,
            job.last_seq,
            job_uuid,
        )
        resume = 0
    if request.method == "HEAD":
        return allow_origin(request, stream_headers(HttpResponse()))
    ticket = _admit(access.identity, f"job={job_uuid}")
    if isinstance(ticket, HttpResponse):
        return allow_origin(request, ticket)
    # Behind DirectWriteMiddleware, the client's end of the connection (the stream's bounds).
    sink = request_sink(request)
    if output == "html":
        html = FragmentStream(request, access, resume, ticket, checked_at, sink=sink)
        return html_response(stream_response(request, html.body()))
    return stream_response(
        request, JobStream(request, access, resume, ticket, checked_at, sink=sink).body()
    )


# The view changes a job: it checks the CSRF token itself, so a site without
# CsrfViewMiddleware in MIDDLEWARE is protected all the same.
@csrf_protect
@require_POST
def job_cancel(request: HttpRequest, job_id: str) -> HttpResponse:
    """Ask a job to stop (CSRF-protected; same authorization and same 404 as the stream).

    ``202`` with ``{"status": "cancel_requested"}`` as long as the job runs (a repeated request
    records no second event), or ``409`` with ``{"error": ...}`` when the job has already ended.
    """
    try:
        job_uuid = uuid.UUID(job_id)
    except ValueError:
        access = None
    else:
        access = authorize_stream(request, job_uuid)
    if access is None:
        # %r: the id comes from the URL, and a control character must not reach the log raw.
        logger.info(
            "Cancel refused: job=%r user=%s",
            job_id[:LOG_VALUE_CHARS],
            describe_user(getattr(request, "user", None)),
        )
        # The stream's 404, for a missing job, a malformed id and somebody else's job alike.
        raise Http404("No job found.")
    try:
        access.job.request_cancel()
    except JobFinished:
        return JsonResponse({"error": gettext("The job has already ended.")}, status=409)
    logger.info("Cancel requested: job=%s user=%s", access.job.pk, describe_user(access.user))
    return JsonResponse({"status": "cancel_requested"}, status=202)


@csrf_exempt
@require_safe
async def session_events(request: HttpRequest) -> HttpResponseBase:
    """Stream the events of all of the visitor's jobs (``?jobs=`` narrows them)."""
    try:
        only = parse_only(request.GET.get("jobs"))
    except ValueError as exc:
        metrics.stream_refused("bad request")
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    checked_at = asyncio.get_running_loop().time()
    try:
        _user, identity = await run_in_db_thread(identify, request)
    except DatabaseError as exc:
        logger.warning("Session stream deferred: the database is unreachable (%r).", exc)
        metrics.stream_refused("database unavailable")
        return stream_response(request, retry_later_body())
    if not identity.known:
        # No user and no session: no job can be theirs, now or later. Stop reconnecting.
        metrics.stream_refused("no session")
        return allow_origin(request, HttpResponse(status=204))
    resume = _session_resume_point(request)
    if request.method == "HEAD":
        return allow_origin(request, stream_headers(HttpResponse()))
    ticket = _admit(identity, "all jobs")
    if isinstance(ticket, HttpResponse):
        return allow_origin(request, ticket)
    sink = request_sink(request)
    stream = SessionStream(request, identity, only, resume, ticket, checked_at, sink=sink)
    return stream_response(request, stream.body())


def _session_resume_point(request: HttpRequest) -> ResumePoint | None:
    """The resume point of an all-jobs stream: None (a first connection) when there is none,
    when it cannot be one we wrote (one WARNING), or when it is older than
    ``RESUME_MAX_AGE_SECONDS`` (the visitor's running jobs are sent, not everything since)."""
    raw = _raw_resume_point(request)
    now = time.time()
    try:
        resume = decode_resume_point(raw, now)
    except InvalidResumePoint as exc:
        logger.warning(
            "Ignored an invalid Last-Event-ID for a session stream (%s): %s; starting afresh.",
            exc,
            untrusted(raw or ""),
        )
        return None
    if resume is not None and resume.horizon < now - conf.RESUME_MAX_AGE_SECONDS:
        logger.info(
            "Last-Event-ID of a session stream is %d s old; starting afresh.",
            now - resume.horizon,
        )
        return None
    return resume

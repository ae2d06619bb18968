"""Pages of the example: the list of your reports, starting one, and watching it run."""

from __future__ import annotations

import json
import logging
import uuid

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from django_sse.exceptions import JobFinished
from django_sse.models import Job, JobQuerySet
from example_project.reports.tasks import DEFAULT_STEPS
from example_project.reports.tasks import run_report as run_report_task

logger = logging.getLogger(__name__)

RECENT_JOBS = 10
# "Run ten reports": short ones, so that the ten finish in a minute or so.
BATCH_SIZE = 10
BATCH_STEPS = 6
# The step that fails when the visitor asks for a failure, to show what one looks like.
FAILING_STEP = 12


def visible_jobs(request: HttpRequest) -> JobQuerySet:
    """The visitor's jobs: the user's, or for an anonymous visitor the session's. The same
    rule as the stream's, so a page never links to a stream that would answer 404."""
    return Job.objects.for_request(request)


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    jobs = visible_jobs(request)[:RECENT_JOBS]
    return render(request, "reports/home.html", {"jobs": jobs, "steps": DEFAULT_STEPS})


def start_report(
    request: HttpRequest, name: str, steps: int, fail_at_step: int | None = None
) -> Job:
    job = Job.objects.create_for_request(request, name=name)
    try:
        run_report_task.enqueue(job_id=str(job.pk), steps=steps, fail_at_step=fail_at_step)
    except Exception:
        logger.exception("Could not queue the report of job %s.", job.pk)
        job.fail("The report could not be queued.")
        messages.error(request, "The report could not be queued; see the server log.")
    return job


@require_POST
def run_report(request: HttpRequest) -> HttpResponse:
    fail_at_step = FAILING_STEP if request.POST.get("fail") else None
    job = start_report(request, "Sales report", DEFAULT_STEPS, fail_at_step)
    return redirect("job-detail", job_id=job.pk)


@require_POST
def run_batch(request: HttpRequest) -> HttpResponse:
    """Ten reports at once: the home page then follows all ten over one connection."""
    for number in range(1, BATCH_SIZE + 1):
        start_report(request, f"Regional report {number}", BATCH_STEPS)
    return redirect("home")


def log_lines_of(job: Job) -> list[str]:
    """The job's log up to job.last_seq: the stream opened after it starts from there."""
    return [
        data.get("line", "") if isinstance(data, dict) else ""
        for data in job.events.filter(type="log", seq__lte=job.last_seq)
        .order_by("seq")
        .values_list("data", flat=True)
    ]


@require_safe
def job_detail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = get_object_or_404(visible_jobs(request), pk=job_id)
    # Events up to job.last_seq were committed with the job row just read, so the log below
    # and the stream opened after it (from last_seq on) meet with no gap and no overlap.
    context = {
        "job": job,
        "log_lines": log_lines_of(job),
        "stream_url": reverse("django_sse:job-events", kwargs={"job_id": job.pk}),
        "cancel_url": reverse("django_sse:job-cancel", kwargs={"job_id": job.pk}),
        "result_json": json.dumps(job.result, indent=2) if job.result is not None else "",
    }
    return render(request, "reports/job.html", context)


# The htmx page's recipes: htmx 4 with its hx-sse (the default), or htmx 2 with htmx-ext-sse.
HTMX_TEMPLATES = {"4": "reports/job_htmx.html", "2": "reports/job_htmx2.html"}


@require_safe
def job_htmx(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """The same job, kept live by htmx (HTML fragments, no django_sse.js): htmx 4, or htmx 2
    with ``?htmx=2``."""
    job = get_object_or_404(visible_jobs(request), pk=job_id)
    template = HTMX_TEMPLATES.get(request.GET.get("htmx", "4"), HTMX_TEMPLATES["4"])
    context = {
        "job": job,
        "log_lines": log_lines_of(job),
        "stream_url": reverse("django_sse:job-events", kwargs={"job_id": job.pk}),
    }
    return render(request, template, context)


@require_POST
def cancel_job(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """The Cancel button without JavaScript (with it, the page posts to django_sse's own
    endpoint instead): ask the worker to stop, then show the job."""
    job = get_object_or_404(visible_jobs(request), pk=job_id)
    try:
        # The worker notices at its next step (raise_if_cancel_requested) and stops.
        job.request_cancel()
    except JobFinished:
        messages.info(request, "The report had already finished.")
    return redirect("job-detail", job_id=job.pk)

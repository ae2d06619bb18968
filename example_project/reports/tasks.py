"""The report: a background task that records its progress on its job as it goes.

It runs in the ``db_worker`` process, not in the web server: every event it records reaches
the browser through the database (and through Redis when ``REDIS_URL`` is set).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings

from django_sse import publish
from django_sse.models import Job
from django_sse.tasks import tracks_job

try:  # Django 6.0+ ships the task framework.
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport, same API.
    from django_tasks import task  # type: ignore[no-redef,unused-ignore]

logger = logging.getLogger(__name__)

SECTIONS = ("orders", "invoices", "refunds", "customers", "shipments")
DEFAULT_STEPS = 20
# Seconds between two steps, unless settings.REPORT_STEP_SECONDS says otherwise.
DEFAULT_STEP_SECONDS = 0.5


class ReportError(Exception):
    """A failure whose message is safe to show to the job's owner."""


def count_rows(step: int) -> int:
    """The rows one step "reads": made up, but the same on every run."""
    return 40 + (step * 37) % 60


@task()
def run_report(
    job_id: str, steps: int = DEFAULT_STEPS, fail_at_step: int | None = None
) -> dict[str, Any] | None:
    """Build the report of job ``job_id`` in ``steps`` steps, failing on purpose at
    ``fail_at_step`` if given (to show what a failure looks like)."""
    return build_report(job_id, steps=steps, fail_at_step=fail_at_step)


# tracks_job starts the job, ends it as succeeded with the return value, as cancelled when the
# Cancel button was pressed (raise_if_cancel_requested), or as failed on an exception (the
# traceback goes to the worker's log, the browser gets error_message).
@tracks_job(error_message="The report failed unexpectedly.")
def build_report(job: Job, *, steps: int, fail_at_step: int | None) -> dict[str, Any]:
    delay_seconds = float(getattr(settings, "REPORT_STEP_SECONDS", DEFAULT_STEP_SECONDS))
    began = time.monotonic()
    rows_by_section = dict.fromkeys(SECTIONS, 0)
    job.set_progress(0, steps, "Connecting to the data source")
    for step in range(1, steps + 1):
        section = SECTIONS[(step - 1) % len(SECTIONS)]
        time.sleep(delay_seconds)
        # Cheap: it reads the database at most once per CANCEL_CHECK_SECONDS.
        job.raise_if_cancel_requested()
        if step == fail_at_step:
            # A failure whose message is safe to show: say it, then let tracks_job log it.
            message = f"Step {step}: the {section} table did not answer."
            job.fail(message)
            raise ReportError(message)
        rows = count_rows(step)
        rows_by_section[section] += rows
        publish(job, "log", {"line": f"Step {step}/{steps}: read {rows} {section}"})
        job.set_progress(step, steps, f"Read {section}")
    result = {
        "rows": sum(rows_by_section.values()),
        "rows_by_section": rows_by_section,
        "steps": steps,
        "seconds": round(time.monotonic() - began, 1),
    }
    logger.info("Report %s done: %d rows.", job.pk, result["rows"])
    return result

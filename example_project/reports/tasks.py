"""The report: a background task that records its progress on its job as it goes.

It runs in the ``db_worker`` process, not in the web server: every event it records reaches
the browser through the database (and through Redis when ``REDIS_URL`` is set).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from django.conf import settings

from django_sse import publish
from django_sse.exceptions import JobFinished
from django_sse.models import Job

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
) -> dict[str, Any]:
    """Build the report of job ``job_id`` in ``steps`` steps, failing on purpose at
    ``fail_at_step`` if given (to show what a failure looks like)."""
    job = Job.objects.get(pk=job_id)
    delay_seconds = float(getattr(settings, "REPORT_STEP_SECONDS", DEFAULT_STEP_SECONDS))
    began = time.monotonic()
    rows_by_section = dict.fromkeys(SECTIONS, 0)
    try:
        job.start()
        job.set_progress(0, steps, "Connecting to the data source")
        for step in range(1, steps + 1):
            section = SECTIONS[(step - 1) % len(SECTIONS)]
            time.sleep(delay_seconds)
            if step == fail_at_step:
                raise ReportError(f"Step {step}: the {section} table did not answer.")
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
        job.succeed(result)
    except JobFinished:
        # Cancelled from the job page: the next event was refused, so stop here.
        logger.info("Report %s was cancelled; stopping.", job_id)
        return {"cancelled": True}
    except ReportError as exc:
        with contextlib.suppress(JobFinished):
            job.fail(str(exc))
        raise
    except (KeyboardInterrupt, SystemExit):
        # The worker was told to stop now (a second Ctrl-C): don't leave the job "running".
        with contextlib.suppress(JobFinished):
            job.fail("The worker stopped before the report was done.")
        raise
    except Exception:
        # The details go to the worker's log, not to the browser.
        with contextlib.suppress(JobFinished):
            job.fail("The report failed unexpectedly.")
        raise
    logger.info("Report %s done: %d rows.", job_id, result["rows"])
    return result

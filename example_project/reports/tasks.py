"""The report: a background task that records its progress on its job as it goes.

It runs in the ``db_worker`` process, not in the web server: every event it records reaches
the browser through the database (and through Redis when ``REDIS_URL`` is set).

Stopping the worker (Ctrl-C, SIGTERM) ends a running report as *cancelled* at once, with a log
line saying why. Left alone, the worker's first signal only stops it taking new tasks and a
second one (Ctrl-C in a terminal sends one to every process of the group, ``kill`` another)
raises ``SystemExit`` in the middle of a step: the job failed and a traceback in the log.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from django.conf import settings
from django.utils.translation import gettext as _

from django_sse import publish
from django_sse.exceptions import CancelRequested
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
# How often a pause between two steps looks whether the worker is shutting down.
SHUTDOWN_CHECK_SECONDS = 0.05
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)

SignalHandler = Callable[[int, FrameType | None], Any]


class ReportError(Exception):
    """A failure whose message is safe to show to the job's owner."""


class ShutdownWatch:
    """Whether the worker running this report was told to stop (SIGINT or SIGTERM).

    The first signal goes on to the worker's own handler too (django-tasks' ``db_worker`` then
    takes no new task and exits once this one returns); later ones stop here, since the report
    already ends at its next check: passed on, they would make the worker raise ``SystemExit``
    inside the report. The handler only sets a flag: it runs between two bytecodes of the main
    thread, where taking a lock or raising could leave a database write half done.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, SignalHandler] = {}

    @property
    def stopping(self) -> bool:
        return self.signal_number is not None

    def install(self) -> bool:
        """Watch SIGINT and SIGTERM, if this is the main thread of a worker that handles
        SIGTERM itself (elsewhere, such as a thread or a shell, nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = {signum: signal.getsignal(signum) for signum in SHUTDOWN_SIGNALS}
        if not callable(previous[signal.SIGTERM]):
            return False
        for signum, handler in previous.items():
            if callable(handler):
                self._previous[signum] = handler
            signal.signal(signum, self._on_signal)
        return True

    def uninstall(self) -> None:
        for signum in SHUTDOWN_SIGNALS:
            # Unless the worker replaced ours meanwhile: its choice stands.
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the worker is told to stop meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, SHUTDOWN_CHECK_SECONDS))

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        first = not self.stopping
        self.signal_number = signum
        handler = self._previous.get(signum)
        if first and handler is not None:
            handler(signum, frame)


@contextlib.contextmanager
def watching_shutdown() -> Iterator[ShutdownWatch]:
    """A :class:`ShutdownWatch` for the duration of the block."""
    watch = ShutdownWatch()
    installed = watch.install()
    try:
        yield watch
    finally:
        if installed:
            watch.uninstall()


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
# Cancel button was pressed (raise_if_cancel_requested) or the worker is stopping, or as failed
# on an exception (the traceback goes to the worker's log, the browser gets error_message).
@tracks_job(error_message="The report failed unexpectedly.")
def build_report(job: Job, *, steps: int, fail_at_step: int | None) -> dict[str, Any]:
    delay_seconds = float(getattr(settings, "REPORT_STEP_SECONDS", DEFAULT_STEP_SECONDS))
    began = time.monotonic()
    rows_by_section = dict.fromkeys(SECTIONS, 0)
    job.set_progress(0, steps, "Connecting to the data source")
    with watching_shutdown() as shutdown:
        for step in range(1, steps + 1):
            section = SECTIONS[(step - 1) % len(SECTIONS)]
            shutdown.sleep(delay_seconds)
            if shutdown.stopping:
                stop_for_shutdown(job, step, steps, shutdown.signal_number)
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


def stop_for_shutdown(job: Job, step: int, steps: int, signal_number: int | None) -> None:
    """Say in the job's log why it stops, then end it as cancelled (through tracks_job)."""
    name = signal.Signals(signal_number).name if signal_number is not None else "a signal"
    logger.warning(
        "Report %s cancelled before step %d/%d: the worker received %s.", job.pk, step, steps, name
    )
    line = _("Stopped before step %(step)d/%(steps)d: the worker was shut down.") % {
        "step": step,
        "steps": steps,
    }
    publish(job, "log", {"line": line})
    raise CancelRequested(f"Job {job.pk}: the worker is shutting down.")

"""Lifecycle helpers mixed into ``Job``: start, progress, succeed, fail, cancel.

Each one updates the job row and records an event of a fixed type in one transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from django_sse import publishing as _publish
from django_sse.cancellation import cancel_check
from django_sse.exceptions import CancelRequested

if TYPE_CHECKING:
    from django_sse.models import JobEvent


class JobLifecycleMixin:
    def start(self) -> JobEvent:
        """Mark the job running and record a ``started`` event."""
        from django_sse.models import JobStatus

        entry = _publish.Entry("started", {}, {"status": JobStatus.RUNNING})
        return _publish._record(self, [entry])[-1]  # type: ignore[arg-type]

    def set_progress(
        self, current: int, total: int | None = None, message: str = ""
    ) -> JobEvent | None:
        """Record progress; updates closer together than the progress interval are coalesced
        (then None is returned and the value is written later, never lost)."""
        return _publish.set_progress(self, current, total, message)  # type: ignore[arg-type]

    def flush_progress(self) -> JobEvent | None:
        """Write coalesced progress now, if any is pending."""
        return _publish.flush_progress(self)  # type: ignore[arg-type]

    def request_cancel(self) -> JobEvent:
        """Ask the job's task to stop: sets ``cancel_requested_at`` and records a
        ``cancel_requested`` event. The job ends only when its task calls ``cancel()``.

        Asking again records nothing and returns the event of the first request, so a job has
        one ``cancel_requested`` event however many requests, concurrent ones included. Raises
        ``JobFinished`` once the job has ended."""
        from django.db import router, transaction
        from django.utils import timezone

        from django_sse.exceptions import JobFinished
        from django_sse.models import ACTIVE_STATUSES, Job, JobEvent

        job_id = self.pk  # type: ignore[attr-defined]
        using = router.db_for_write(JobEvent)
        jobs = Job.objects.db_manager(using).filter(pk=job_id)
        now = timezone.now()
        with transaction.atomic(using=using):
            # The UPDATE takes the job's row lock (SQLite: the write lock) until the event is
            # committed with it: a concurrent request waits, then matches no row.
            claimed = jobs.filter(
                status__in=ACTIVE_STATUSES, cancel_requested_at__isnull=True
            ).update(cancel_requested_at=now)
            if claimed:
                entry = _publish.Entry("cancel_requested", {}, {"cancel_requested_at": now})
                return _publish._record(self, [entry])[-1]  # type: ignore[arg-type]
            row = jobs.values_list("status", "cancel_requested_at").first()
            if row is None:
                raise Job.DoesNotExist(f"Job {job_id} does not exist.")
            status, requested_at = row
            if status not in ACTIVE_STATUSES:
                raise JobFinished(f"Job {job_id} has {status}; it takes no more events.")
            self.cancel_requested_at = requested_at
            first: JobEvent | None = (
                JobEvent.objects.db_manager(using)
                .filter(job_id=job_id, type="cancel_requested")
                .order_by("seq")
                .first()
            )
            if first is not None:
                return first
            # cancel_requested_at was set by hand, without the event: record the event now.
            entry = _publish.Entry("cancel_requested", {})
            return _publish._record(self, [entry])[-1]  # type: ignore[arg-type]

    def cancel_requested(self) -> bool:
        """Whether a cancel was asked for. Cheap enough for every iteration of a loop: the
        database is read at most once per ``CANCEL_CHECK_SECONDS``."""
        return cancel_check.requested(self.pk)  # type: ignore[attr-defined]

    def raise_if_cancel_requested(self) -> None:
        """Raise ``CancelRequested`` if a cancel was asked for (``tracks_job`` then ends the
        job as ``cancelled``)."""
        if self.cancel_requested():
            raise CancelRequested(f"Job {self.pk} was asked to stop.")  # type: ignore[attr-defined]

    def succeed(self, result: Any = None) -> JobEvent:
        """End the job with ``result`` and record a ``succeeded`` event."""
        stored, _text = _publish.encode_data(result)
        entry = _publish.terminal_entry("succeeded", {"result": stored}, {"result": stored})
        return _publish._record(self, [entry])[-1]  # type: ignore[arg-type]

    def fail(self, error: str = "") -> JobEvent:
        """End the job with an error message (shown to the browser: keep it safe)."""
        entry = _publish.terminal_entry("failed", {"error": str(error)}, {"error": str(error)})
        return _publish._record(self, [entry])[-1]  # type: ignore[arg-type]

    def cancel(self) -> JobEvent:
        """End the job as cancelled."""
        entry = _publish.terminal_entry("cancelled", {}, {})
        return _publish._record(self, [entry])[-1]  # type: ignore[arg-type]

    async def astart(self) -> JobEvent:
        return await sync_to_async(self.start)()

    async def aset_progress(
        self, current: int, total: int | None = None, message: str = ""
    ) -> JobEvent | None:
        return await _publish.aset_progress(self, current, total, message)  # type: ignore[arg-type]

    async def aflush_progress(self) -> JobEvent | None:
        return await sync_to_async(self.flush_progress)()

    async def arequest_cancel(self) -> JobEvent:
        """Async twin of :meth:`request_cancel` (as idempotent)."""
        return await sync_to_async(self.request_cancel)()

    async def acancel_requested(self) -> bool:
        return await sync_to_async(self.cancel_requested)()

    async def asucceed(self, result: Any = None) -> JobEvent:
        return await sync_to_async(self.succeed)(result)

    async def afail(self, error: str = "") -> JobEvent:
        return await sync_to_async(self.fail)(error)

    async def acancel(self) -> JobEvent:
        return await sync_to_async(self.cancel)()

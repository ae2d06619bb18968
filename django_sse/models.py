"""Jobs and their progress events. The database is the record; the channel layer is a fast path."""

from __future__ import annotations

import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, router, transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_sse.cancellation import cancel_check
from django_sse.exceptions import CancelRequested, JobFinished
from django_sse.identity import SESSION_HASH_LENGTH
from django_sse.jsontext import CompactJSONEncoder, encode_data
from django_sse.lifecycle import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    MESSAGE_MAX_LENGTH,
    JobStatus,
)
from django_sse.managers import JobQuerySet
from django_sse.recording import Entry, EventManager, terminal_entry

# JobQuerySet lives in managers.py; it is importable from here, as it always was.
__all__ = ["Job", "JobEvent", "JobQuerySet"]


class Job(models.Model):
    """A long-running piece of work whose progress is streamed to its owner."""

    Status = JobStatus

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="sse_jobs",
        verbose_name=_("owner"),
    )
    # For a job of an anonymous visitor: a keyed hash of the session key (see identity.py),
    # never the key itself, which would let anybody who reads this table take the session.
    session_hash = models.CharField(
        _("session hash"), max_length=SESSION_HASH_LENGTH, blank=True, default="", editable=False
    )
    name = models.CharField(_("name"), max_length=200, blank=True, default="")
    status = models.CharField(
        _("status"), max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING
    )
    current = models.PositiveBigIntegerField(_("current"), default=0)
    total = models.PositiveBigIntegerField(_("total"), null=True, blank=True)
    message = models.CharField(_("message"), max_length=MESSAGE_MAX_LENGTH, blank=True, default="")
    result = models.JSONField(_("result"), null=True, blank=True, encoder=DjangoJSONEncoder)
    error = models.TextField(_("error"), blank=True, default="")
    # The seq of the newest event; incremented under the row lock that orders publishers.
    last_seq = models.PositiveBigIntegerField(_("last event"), default=0, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    # Set by request_cancel(); the task notices it with cancel_requested() and stops.
    cancel_requested_at = models.DateTimeField(_("cancel requested"), null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("job")
        verbose_name_plural = _("jobs")
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="django_sse_job_owner_idx"),
            models.Index(fields=["session_hash", "-created_at"], name="django_sse_job_shash_idx"),
            models.Index(fields=["status", "finished_at"], name="django_sse_job_status_idx"),
        ]

    def __str__(self) -> str:
        # Outside the f-string: xgettext (makemessages) does not look inside f-strings.
        name = self.name or _("Job")
        return f"{name} ({self.get_status_display()})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def percent(self) -> float | None:
        """Progress as a percentage, or None while the total is unknown."""
        if not self.total:
            return None
        return min(100.0, 100.0 * self.current / self.total)

    # The lifecycle helpers: each updates the job row and records an event of a fixed type in
    # one transaction.

    def start(self) -> JobEvent:
        """Mark the job running and record a ``started`` event."""
        entry = Entry("started", {}, {"status": JobStatus.RUNNING})
        return recorder.record(self, [entry])[-1]

    def set_progress(
        self, current: int, total: int | None = None, message: str = ""
    ) -> JobEvent | None:
        """Record progress; updates closer together than the progress interval are coalesced
        (then None is returned and the value is written later, never lost)."""
        return recorder.record_progress(self, current, total, message)

    def flush_progress(self) -> JobEvent | None:
        """Write coalesced progress now, if any is pending."""
        return recorder.flush_progress(self)

    def request_cancel(self) -> JobEvent:
        """Ask the job's task to stop: sets ``cancel_requested_at`` and records a
        ``cancel_requested`` event. The job ends only when its task calls ``cancel()``.

        Asking again records nothing and returns the event of the first request, so a job has
        one ``cancel_requested`` event however many requests, concurrent ones included. Raises
        ``JobFinished`` once the job has ended."""
        job_id = self.pk
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
                entry = Entry("cancel_requested", {}, {"cancel_requested_at": now})
                return recorder.record(self, [entry])[-1]
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
            entry = Entry("cancel_requested", {})
            return recorder.record(self, [entry])[-1]

    def cancel_requested(self) -> bool:
        """Whether a cancel was asked for. Cheap enough for every iteration of a loop: the
        database is read at most once per ``CANCEL_CHECK_SECONDS``."""
        return cancel_check.requested(self.pk, _cancel_requested_in_db)

    def raise_if_cancel_requested(self) -> None:
        """Raise ``CancelRequested`` if a cancel was asked for (``tracks_job`` then ends the
        job as ``cancelled``)."""
        if self.cancel_requested():
            raise CancelRequested(f"Job {self.pk} was asked to stop.")

    def succeed(self, result: Any = None) -> JobEvent:
        """End the job with ``result`` and record a ``succeeded`` event."""
        stored, _text = encode_data(result)
        entry = terminal_entry("succeeded", {"result": stored}, {"result": stored})
        return recorder.record(self, [entry])[-1]

    def fail(self, error: str = "") -> JobEvent:
        """End the job with an error message (shown to the browser: keep it safe)."""
        entry = terminal_entry("failed", {"error": str(error)}, {"error": str(error)})
        return recorder.record(self, [entry])[-1]

    def cancel(self) -> JobEvent:
        """End the job as cancelled."""
        entry = terminal_entry("cancelled", {}, {})
        return recorder.record(self, [entry])[-1]

    async def astart(self) -> JobEvent:
        return await sync_to_async(self.start)()

    async def aset_progress(
        self, current: int, total: int | None = None, message: str = ""
    ) -> JobEvent | None:
        return await recorder.arecord_progress(self, current, total, message)

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


class JobEvent(models.Model):
    """One event of a job, numbered 1, 2, 3 ... without gaps by ``seq``."""

    job = models.ForeignKey(
        Job, on_delete=models.CASCADE, related_name="events", verbose_name=_("job")
    )
    seq = models.PositiveBigIntegerField(_("sequence number"))
    type = models.CharField(_("type"), max_length=64)
    data = models.JSONField(_("data"), null=True, blank=True, encoder=CompactJSONEncoder)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = EventManager()

    class Meta:
        ordering = ["job", "seq"]
        verbose_name = _("job event")
        verbose_name_plural = _("job events")
        constraints = [
            # Its index also serves replay: WHERE job_id = ? AND seq > ? ORDER BY seq.
            models.UniqueConstraint(fields=["job", "seq"], name="django_sse_jobevent_job_seq"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.type}"


# ``JobEvent.objects`` with its type: mypy (django-stubs) sees every model's ``objects`` as Any.
recorder: EventManager = JobEvent.objects


def _cancel_requested_in_db(job_id: uuid.UUID) -> bool:
    return bool(Job.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists())

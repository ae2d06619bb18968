"""Jobs and their progress events. The database is the record; the channel layer is a fast path."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, ClassVar, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.http import Http404
from django.utils.translation import gettext_lazy as _

from django_sse import lifecycle
from django_sse.auth import can_access, identify
from django_sse.identity import SESSION_HASH_LENGTH, hash_session_key, session_hashes
from django_sse.validation import MESSAGE_MAX_LENGTH

if TYPE_CHECKING:
    from django.http import HttpRequest


class CompactJSONEncoder(DjangoJSONEncoder):
    """Django's encoder without spaces: stored event data (and so a replay) reads as the live
    stream's compact JSON where the database keeps the text as given (SQLite)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["separators"] = (",", ":")
        super().__init__(*args, **kwargs)


class JobStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")


# Plain strings: django-stubs types TextChoices members with labels as tuples.
ACTIVE_STATUSES: frozenset[str] = frozenset({"pending", "running"})
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


# One message for every refusal of get_for_request(): a stranger learns nothing from it.
_NO_JOB = "No job matches the given query."


class JobQuerySet(models.QuerySet["Job"]):
    def create_for_request(self, request: HttpRequest, **fields: Any) -> Job:
        """Create a job owned by the request's user or, for an anonymous visitor, by the
        request's session (saved first if it has no key yet)."""
        user = request.user
        if user.is_authenticated:
            return self.create(owner=user, **fields)
        if request.session.session_key is None:
            request.session.save()
        return self.create(
            session_hash=hash_session_key(request.session.session_key or ""), **fields
        )

    async def acreate_for_request(self, request: HttpRequest, **fields: Any) -> Job:
        """Async twin of :meth:`create_for_request`."""
        user = await request.auser()
        if user.is_authenticated:
            return await self.acreate(owner=user, **fields)
        if request.session.session_key is None:
            await request.session.asave()
        session_hash = hash_session_key(request.session.session_key or "")
        return await self.acreate(session_hash=session_hash, **fields)

    def for_session_key(self, session_key: str | None) -> JobQuerySet:
        """The jobs of the anonymous visitor whose session has this key."""
        if not session_key:
            return cast(JobQuerySet, self.none())
        hashes = session_hashes(session_key)
        return cast(JobQuerySet, self.filter(owner__isnull=True, session_hash__in=hashes))

    def for_request(self, request: HttpRequest) -> JobQuerySet:
        """The visitor's jobs: the user's, or an anonymous visitor's session's (the rule the
        streams apply, so a page listing these never links to a stream that answers 404)."""
        user = request.user
        if user.is_authenticated:
            return cast(JobQuerySet, self.filter(owner=user))
        return self.for_session_key(request.session.session_key)

    def get_for_request(self, request: HttpRequest, job_id: object) -> Job:
        """The job ``job_id`` if the request may see it (its user or anonymous session owns
        it, or ``DJANGO_SSE["AUTHORIZE"]`` admits it), else ``Http404``: the same 404 for a job
        of somebody else, a missing job and a malformed id, so the answer tells a stranger
        nothing. The rule the streams apply: a page fetched with this shows exactly the jobs
        whose stream answers."""
        try:
            pk = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
        except ValueError:
            raise Http404(_NO_JOB) from None
        job = cast("Job | None", self.filter(pk=pk).first())
        if job is not None:
            _user, identity = identify(request)
            if can_access(request, job, identity):
                return job
        raise Http404(_NO_JOB)

    async def aget_for_request(self, request: HttpRequest, job_id: object) -> Job:
        """Async twin of :meth:`get_for_request`."""
        return await sync_to_async(self.get_for_request)(request, job_id)

    def active(self) -> JobQuerySet:
        return cast(JobQuerySet, self.filter(status__in=ACTIVE_STATUSES))

    def finished(self) -> JobQuerySet:
        return cast(JobQuerySet, self.filter(status__in=FINISHED_STATUSES))


class Job(lifecycle.JobLifecycleMixin, models.Model):
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

    objects: ClassVar[JobQuerySet] = JobQuerySet.as_manager()  # type: ignore[assignment]

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


class JobEvent(models.Model):
    """One event of a job, numbered 1, 2, 3 ... without gaps by ``seq``."""

    job = models.ForeignKey(
        Job, on_delete=models.CASCADE, related_name="events", verbose_name=_("job")
    )
    seq = models.PositiveBigIntegerField(_("sequence number"))
    type = models.CharField(_("type"), max_length=64)
    data = models.JSONField(_("data"), null=True, blank=True, encoder=CompactJSONEncoder)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

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

"""The states a job passes through and the events that mark them.

One vocabulary for the whole package: the model's ``status`` choices, the statuses in which a
job still takes events, the event types the lifecycle helpers record (``job.start()``,
``job.succeed()`` ...), which of them end a job, and the rule every event type follows.

A job ends with an event whose type is the name of its finished status (``succeeded``,
``failed``, ``cancelled``): ``TERMINAL_TYPES`` and ``FINISHED_STATUSES`` are one set, so a
stream that sees a terminal event and a page that sees a finished job agree.
"""

from __future__ import annotations

import re

from django.db import models
from django.utils.translation import gettext_lazy as _

from django_sse.exceptions import InvalidEventType


class JobStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")


# Plain strings: django-stubs types TextChoices members with labels as tuples.
ACTIVE_STATUSES: frozenset[str] = frozenset({"pending", "running"})
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
# The event types that end a job: the names of the finished statuses.
TERMINAL_TYPES: frozenset[str] = FINISHED_STATUSES
# The event types only the lifecycle helpers record.
LIFECYCLE_TYPES: frozenset[str] = frozenset(
    {"started", "progress", "cancel_requested", *TERMINAL_TYPES}
)

# Letters, digits, "_", "-", "." only: no CR, LF, NUL, space or colon can reach the wire.
EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
# Longest progress message (the length of Job.message).
MESSAGE_MAX_LENGTH = 500


def validate_event_type(event: object, *, allow_lifecycle: bool = False) -> str:
    """``event`` if it is a valid event type, else ``InvalidEventType``; the lifecycle types
    are refused unless ``allow_lifecycle``."""
    if not isinstance(event, str) or not EVENT_TYPE_RE.match(event):
        raise InvalidEventType(
            f"Invalid event type {event!r}: use 1 to 64 characters among letters, digits, "
            f"'_', '-' and '.'."
        )
    if not allow_lifecycle and event in LIFECYCLE_TYPES:
        raise InvalidEventType(
            f"The event type {event!r} is reserved for the job's lifecycle; call "
            f"job.start(), job.set_progress(), job.request_cancel(), job.succeed(), job.fail() "
            f"or job.cancel()."
        )
    return event

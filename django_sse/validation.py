"""Checks on what callers hand to ``publish``: event types, payloads, resume ids."""

from __future__ import annotations

import json
import re
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from django_sse.conf import conf
from django_sse.exceptions import EventDataNotSerializable, EventDataTooLarge, InvalidEventType

# Letters, digits, "_", "-", "." only: no CR, LF, NUL, space or colon can reach the wire.
EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
LIFECYCLE_TYPES = frozenset(
    {"started", "progress", "cancel_requested", "succeeded", "failed", "cancelled"}
)
TERMINAL_TYPES = frozenset({"succeeded", "failed", "cancelled"})
# Longest progress message (the length of Job.message).
MESSAGE_MAX_LENGTH = 500
# A resume id longer than this is not one we ever sent (seq is a 64-bit integer).
MAX_RESUME_ID_DIGITS = 19


def validate_event_type(event: object, *, allow_lifecycle: bool = False) -> str:
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


def encode_data(data: Any) -> tuple[Any, str]:
    """Encode ``data`` with Django's JSON encoder and check its size.

    Returns the value as it will be stored and read back (dates, decimals and UUIDs become
    strings) and its compact JSON text.
    """
    try:
        text = json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise EventDataNotSerializable(f"Event data cannot be encoded as JSON: {exc}") from exc
    size = len(text.encode("utf-8"))
    limit = conf.MAX_DATA_BYTES
    if size > limit:
        raise EventDataTooLarge(
            f"Event data is {size} bytes of JSON, over the limit of {limit} bytes "
            f"(DJANGO_SSE['MAX_DATA_BYTES'])."
        )
    return json.loads(text), text


def dump_data(data: Any) -> str:
    """JSON text of data that was already normalised by ``encode_data`` or read back."""
    return json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False)


def parse_resume_id(value: str | None) -> int | None:
    """A ``Last-Event-ID`` we could have sent: a plain non-negative integer of sane length."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_RESUME_ID_DIGITS or not value.isascii():
        return None
    if not value.isdigit():
        return None
    return int(value)

"""Reading a channel-layer message back into the event it announces, or refusing it.

Messages come from ``delivery.push_event``, but a layer is shared: anything in a group's
channel is checked before it can reach a stream. A message is taken only if it has exactly
what the database would give for the event (a valid type, a ``seq`` a column can hold, compact
JSON text on one line); anything else is dropped, and logged by its shape, never its data.
"""

from __future__ import annotations

import uuid
from typing import Any

from django_sse.conf import conf
from django_sse.lifecycle import EVENT_TYPE_RE
from django_sse.replay import StoredEvent
from django_sse.resume import MAX_SEQ


def parse_event_message(message: Any) -> tuple[uuid.UUID, StoredEvent] | None:
    """The job and event of a layer message, or None if it is not one ``push_event`` makes."""
    if not isinstance(message, dict):
        return None
    job, seq, type_, data = (message.get(key) for key in ("job", "seq", "event", "data"))
    if not isinstance(job, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    if not (0 < seq <= MAX_SEQ) or not isinstance(type_, str) or not EVENT_TYPE_RE.match(type_):
        return None
    # Compact JSON text is one line; anything else would not be what the database holds.
    if not isinstance(data, str) or "\n" in data or "\r" in data:
        return None
    if len(data) > 4 * conf.MAX_DATA_BYTES:
        return None
    try:
        job_id = uuid.UUID(hex=job)
    except ValueError:
        return None
    return job_id, StoredEvent(seq, type_, data)


def message_shape(message: Any) -> str:
    """What a message looks like, for a log line: its keys and the types of their values."""
    if not isinstance(message, dict):
        return type(message).__name__
    fields = ", ".join(
        f"{str(key)[:40]!r}: {type(value).__name__}" for key, value in list(message.items())[:20]
    )
    return "{" + fields + "}"

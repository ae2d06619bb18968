"""Reading a channel-layer message back into the events it announces, or refusing it.

Messages come from ``pushing.py`` (one event, or a batch of consecutive events of one job), but
a layer is shared: anything in a group's channel is checked before it can reach a stream. A
message is taken only if it has exactly what the database would give for its events (valid
types, ``seq`` numbers a column can hold, compact JSON text on one line); anything else is
dropped whole, and logged by its shape, never its data.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeGuard

from django_sse.conf import conf
from django_sse.lifecycle import EVENT_TYPE_RE
from django_sse.replay import StoredEvent
from django_sse.resume import MAX_SEQ


def _is_seq(seq: object) -> TypeGuard[int]:
    return isinstance(seq, int) and not isinstance(seq, bool) and 0 < seq <= MAX_SEQ


def _is_event(type_: str, data: str) -> bool:
    if not EVENT_TYPE_RE.match(type_):
        return False
    # Compact JSON text is one line; anything else would not be what the database holds.
    if "\n" in data or "\r" in data:
        return False
    return len(data) <= 4 * conf.MAX_DATA_BYTES


def _job_id(job: object) -> uuid.UUID | None:
    if not isinstance(job, str):
        return None
    try:
        return uuid.UUID(hex=job)
    except ValueError:
        return None


def parse_event_message(message: Any) -> tuple[uuid.UUID, StoredEvent] | None:
    """The job and event of a layer message, or None if it is not one ``push_event`` makes."""
    if not isinstance(message, dict):
        return None
    job, seq, type_, data = (message.get(key) for key in ("job", "seq", "event", "data"))
    if not _is_seq(seq) or not isinstance(type_, str) or not isinstance(data, str):
        return None
    if not _is_event(type_, data):
        return None
    job_id = _job_id(job)
    if job_id is None:
        return None
    return job_id, StoredEvent(seq, type_, data)


def parse_batch_message(message: Any, max_bytes: int) -> tuple[uuid.UUID, list[StoredEvent]] | None:
    """The job and consecutive events of a batch message (``seq``: the first event's,
    ``events``: ``[type, data]`` pairs), or None if it is not one ``push_events`` makes with at
    most ``max_bytes`` of event text."""
    if not isinstance(message, dict):
        return None
    job, seq, entries = (message.get(key) for key in ("job", "seq", "events"))
    if not _is_seq(seq) or not isinstance(entries, list) or not entries:
        return None
    if seq + len(entries) - 1 > MAX_SEQ:
        return None
    job_id = _job_id(job)
    if job_id is None:
        return None
    events: list[StoredEvent] = []
    size = 0
    for offset, entry in enumerate(entries):
        if not isinstance(entry, list) or len(entry) != 2:
            return None
        type_, data = entry
        if not isinstance(type_, str) or not isinstance(data, str) or not _is_event(type_, data):
            return None
        size += len(type_) + len(data)  # characters: never more than the sender's bytes
        if size > max_bytes:
            return None
        events.append(StoredEvent(seq + offset, type_, data))
    return job_id, events


def message_shape(message: Any) -> str:
    """What a message looks like, for a log line: its keys and the types of their values."""
    if not isinstance(message, dict):
        return type(message).__name__
    fields = ", ".join(
        f"{str(key)[:40]!r}: {type(value).__name__}" for key, value in list(message.items())[:20]
    )
    return "{" + fields + "}"

"""The public way to record events: ``publish``, ``set_progress`` and their async twins.

Each checks its input here, before anything is written or any thread is used, then hands the
event to ``recorder.record`` (``recording.py``), which numbers, stores and, once the
transaction commits, pushes it. ``django_sse`` re-exports ``publish`` and ``apublish``.
"""

from __future__ import annotations

import uuid
from typing import Any

from asgiref.sync import sync_to_async

from django_sse.jsontext import encode_data
from django_sse.lifecycle import validate_event_type
from django_sse.models import Job, JobEvent, recorder
from django_sse.recording import Entry

__all__ = ["apublish", "encode_data", "publish"]


def publish(job: Job | uuid.UUID | str, event: str, data: Any = None) -> JobEvent:
    """Record an event of type ``event`` for ``job`` and return it.

    The event reaches open streams once the surrounding transaction commits. Raises
    ``InvalidEventType``, ``EventDataNotSerializable``, ``EventDataTooLarge``, ``JobFinished``
    or ``Job.DoesNotExist``; in every case nothing is stored.
    """
    validate_event_type(event)
    stored, _text = encode_data(data)
    return recorder.record(job, [Entry(event, stored)])[-1]


async def apublish(job: Job | uuid.UUID | str, event: str, data: Any = None) -> JobEvent:
    """Async twin of :func:`publish`; input is checked before any thread is used."""
    validate_event_type(event)
    stored, _text = encode_data(data)
    events = await sync_to_async(recorder.record)(job, [Entry(event, stored)])
    return events[-1]


def set_progress(
    job: Job | uuid.UUID | str, current: int, total: int | None = None, message: str = ""
) -> JobEvent | None:
    """Record progress, coalescing updates closer together than the progress interval.

    Returns the event written, or None when the value was kept pending.
    """
    return recorder.record_progress(job, current, total, message)


async def aset_progress(
    job: Job | uuid.UUID | str, current: int, total: int | None = None, message: str = ""
) -> JobEvent | None:
    return await recorder.arecord_progress(job, current, total, message)


def flush_progress(job: Job | uuid.UUID | str) -> JobEvent | None:
    """Write progress that is still pending for ``job``, if any."""
    return recorder.flush_progress(job)

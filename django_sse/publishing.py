"""The public way to record events: ``publish``, ``publish_many``, ``set_progress`` and their
async twins.

Each checks its input here, before anything is written or any thread is used, then hands the
events to ``recorder.record`` (``recording.py``), which numbers, stores and, once the
transaction commits, pushes them. ``django_sse`` re-exports ``publish``, ``publish_many`` and
their async twins.

``publish_many`` is one call, one transaction, one batch of consecutive ``seq`` numbers: a
job that logs thousands of lines pays for one transaction per batch instead of one per event.
A batch is checked whole before anything is written, so one bad event stores none, and it is
bounded (``MAX_BATCH_EVENTS``) rather than split here: splitting would make a call that fails
halfway leave part of its events stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from asgiref.sync import sync_to_async

from django_sse.conf import conf
from django_sse.exceptions import SSEError
from django_sse.jsontext import encode_data
from django_sse.lifecycle import validate_event_type
from django_sse.models import Job, JobEvent, recorder
from django_sse.recording import Entry

__all__ = ["apublish", "apublish_many", "encode_data", "publish", "publish_many"]


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


def batch_entries(events: Iterable[tuple[str, Any]]) -> list[Entry]:
    """The entries of a batch, every event checked as ``publish`` checks one.

    A bad event raises the error ``publish`` would, of the same class, its message starting
    with the event's index (``events[3]: ...``); a batch over ``MAX_BATCH_EVENTS`` raises
    ``ValueError``.
    """
    limit = conf.MAX_BATCH_EVENTS
    entries: list[Entry] = []
    for index, pair in enumerate(events):
        if index >= limit:
            raise ValueError(
                f"A batch holds at most {limit} events (DJANGO_SSE['MAX_BATCH_EVENTS']); "
                f"split it into several publish_many() calls."
            )
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"events[{index}]: expected an (event type, data) pair, not {pair!r}.")
        event, data = pair
        try:
            validate_event_type(event)
            stored, _text = encode_data(data)
        except SSEError as exc:
            raise type(exc)(f"events[{index}]: {exc}") from exc
        entries.append(Entry(event, stored))
    return entries


def publish_many(job: Job | uuid.UUID | str, events: Iterable[tuple[str, Any]]) -> list[JobEvent]:
    """Record ``events``, ``(type, data)`` pairs, as consecutive events of ``job`` in one
    transaction and return them in order (an empty batch records nothing).

    Every event is checked first, as :func:`publish` checks one: on any error nothing is
    stored. The batch reaches open streams once the surrounding transaction commits, as few
    layer messages as its size allows.
    """
    entries = batch_entries(events)
    if not entries:
        return []
    recorded = recorder.record(job, entries)
    # Progress coalesced before this batch was written first, in the same transaction.
    return recorded[len(recorded) - len(entries) :]


async def apublish_many(
    job: Job | uuid.UUID | str, events: Iterable[tuple[str, Any]]
) -> list[JobEvent]:
    """Async twin of :func:`publish_many`; input is checked before any thread is used."""
    entries = batch_entries(events)
    if not entries:
        return []
    recorded = await sync_to_async(recorder.record)(job, entries)
    return recorded[len(recorded) - len(entries) :]


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

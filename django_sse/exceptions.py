"""Exceptions raised by django_sse. Each one stores nothing: the database is left as it was."""

from __future__ import annotations


class SSEError(Exception):
    """Base class of every error django_sse raises on purpose."""


class InvalidEventType(SSEError, ValueError):
    """The event type is not 1 to 64 of ``A-Z a-z 0-9 _ - .``, or is reserved for a lifecycle
    helper (``started``, ``progress``, ``cancel_requested``, ``succeeded``, ``failed``,
    ``cancelled``)."""


class EventDataNotSerializable(SSEError, TypeError):
    """The event data cannot be encoded by Django's JSON encoder."""


class EventDataTooLarge(SSEError, ValueError):
    """The encoded event data is larger than ``DJANGO_SSE["MAX_DATA_BYTES"]``."""


class JobFinished(SSEError):
    """The job has already ended (succeeded, failed or cancelled) and takes no more events."""


class CancelRequested(SSEError):
    """Raised by ``job.raise_if_cancel_requested()`` inside a task; ``tracks_job`` turns it into
    a ``cancelled`` job."""

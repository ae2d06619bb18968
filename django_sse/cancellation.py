"""Asking a running job to stop, and the cheap check its task makes.

A browser (or anyone allowed) calls ``job.request_cancel()``; the task polls
``job.cancel_requested()`` in its loop. The check reads the database at most once per
``CANCEL_CHECK_SECONDS`` per job and process, so calling it on every iteration is fine.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from django_sse.conf import conf


class CancelCheck:
    """Per-process memory of the last database check of each job. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked: dict[uuid.UUID, tuple[float, bool]] = {}

    def requested(self, job_id: uuid.UUID, read: Callable[[uuid.UUID], bool]) -> bool:
        """Whether a cancel of ``job_id`` was asked for; ``read`` asks the database, at most
        once per ``CANCEL_CHECK_SECONDS`` (and never again once it said yes)."""
        now = time.monotonic()
        with self._lock:
            cached = self._checked.get(job_id)
        if cached is not None and (cached[1] or now - cached[0] < conf.CANCEL_CHECK_SECONDS):
            return cached[1]
        value = read(job_id)
        with self._lock:
            self._checked[job_id] = (now, value)
        return value

    def forget(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._checked.pop(job_id, None)


cancel_check = CancelCheck()

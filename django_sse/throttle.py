"""Coalescing of progress updates, so a tight loop of ``set_progress`` stays cheap.

The first update of a job is written at once; later ones closer together than
``PROGRESS_INTERVAL_SECONDS`` only replace a pending value kept in memory. The pending value is
written by the next update after the interval, by the next event published to the job (it is
recorded just before that event), by a terminal event, or by ``flush_progress``: the latest value
is never lost while the job goes on to an end.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import NamedTuple


class Progress(NamedTuple):
    current: int
    total: int | None
    message: str


class _State:
    __slots__ = ("last_write", "pending")

    def __init__(self, last_write: float) -> None:
        self.last_write = last_write
        self.pending: Progress | None = None


class ProgressThrottle:
    """Per-process memory of when each job last wrote progress. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[uuid.UUID, _State] = {}

    def offer(self, job_id: uuid.UUID, progress: Progress, interval: float) -> bool:
        """Return True if ``progress`` should be written now; otherwise keep it as pending."""
        now = time.monotonic()
        with self._lock:
            state = self._states.get(job_id)
            if state is None:
                self._states[job_id] = _State(now)
                return True
            if now - state.last_write >= interval:
                state.last_write = now
                state.pending = None
                return True
            state.pending = progress
            return False

    def take_pending(self, job_id: uuid.UUID) -> Progress | None:
        with self._lock:
            state = self._states.get(job_id)
            if state is None or state.pending is None:
                return None
            pending, state.pending = state.pending, None
            return pending

    def peek_pending(self, job_id: uuid.UUID) -> Progress | None:
        with self._lock:
            state = self._states.get(job_id)
            return None if state is None else state.pending

    def discard_pending(self, job_id: uuid.UUID, progress: Progress) -> None:
        """Forget ``progress`` once it is committed, unless a newer value replaced it."""
        with self._lock:
            state = self._states.get(job_id)
            if state is not None and state.pending is progress:
                state.pending = None

    def restore_pending(self, job_id: uuid.UUID, progress: Progress) -> None:
        """Put back a pending value whose write failed, unless a newer one arrived meanwhile."""
        with self._lock:
            state = self._states.setdefault(job_id, _State(time.monotonic()))
            if state.pending is None:
                state.pending = progress

    def forget(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._states.pop(job_id, None)


progress_throttle = ProgressThrottle()

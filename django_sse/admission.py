"""How many streams one visitor may hold open in this process.

A stream costs little, but not nothing: memory, a subscription, a share of the database thread
at every heartbeat. Without a limit, one visitor (a script, or a page bug opening streams in a
loop) could open thousands and slow every other visitor's streams. ``MAX_STREAMS_PER_IDENTITY``
streams per user or anonymous session are admitted; the next is refused with ``429 Too Many
Requests`` (see ``views.py``), which makes ``EventSource`` stop instead of reconnecting in a
loop. A browser needs far fewer: the client library shares one stream between a page's jobs
and between a site's tabs.
"""

from __future__ import annotations

import threading


class Ticket:
    """One admitted stream; ``release()`` gives its place back (once)."""

    __slots__ = ("_admission", "key")

    def __init__(self, admission: Admission | None, key: str) -> None:
        self._admission = admission
        self.key = key

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission.leave(self.key)


class Admission:
    """Open streams per visitor key (``Identity.limit_key``). Thread-safe: a process may run
    streams on several event loops (tests do)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def admit(self, key: str, limit: int) -> Ticket | None:
        """A ticket, or None if ``key`` already holds ``limit`` streams."""
        with self._lock:
            count = self._open.get(key, 0)
            if count >= limit:
                return None
            self._open[key] = count + 1
        return Ticket(self, key)

    def leave(self, key: str) -> None:
        with self._lock:
            count = self._open.get(key, 0) - 1
            if count > 0:
                self._open[key] = count
            else:
                self._open.pop(key, None)

    def open_streams(self, key: str) -> int:
        with self._lock:
            return self._open.get(key, 0)


admission = Admission()

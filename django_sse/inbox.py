"""What a stream holds of the live events the hub hands it, until its task sends them.

The hub encodes each live event once (``EncodedEvent``) and hands it to every subscriber of the
job. A stream's ``Inbox`` is the subscriber that keeps them for the stream's task. It is bounded
in bytes: a stream that does not keep up (its client reads slowly, or it is busy with a replay)
would otherwise hold every event published meanwhile. Past its budget the inbox is emptied and
only remembers the newest ``seq`` (``behind``): the stream reads everything up to it from the
database, which is the record, when it gets to it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from django_sse.conf import conf
from django_sse.lifecycle import TERMINAL_TYPES
from django_sse.replay import StoredEvent
from django_sse.sse import encode_event
from django_sse.wakeup import Wakeup


class EncodedEvent(NamedTuple):
    """A live event, its SSE bytes (encoded once for every single-job stream of the process)
    and whether it is the job's last."""

    event: StoredEvent
    chunk: bytes
    terminal: bool


def encode_live(event: StoredEvent) -> EncodedEvent:
    """``event`` as the hub hands it to subscribers."""
    return EncodedEvent(
        event,
        encode_event(event.data, event=event.type, id=event.seq),
        event.type in TERMINAL_TYPES,
    )


class InboxBudget:
    """The bytes of live events one stream may hold before it reads them from the database
    instead (shared by the inboxes of a stream that follows several jobs)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = conf.MAX_BUFFERED_BYTES // 4 if limit is None else limit
        self.used = 0


class Inbox:
    """One open stream's live events of one job, in the order the hub handed them (see the
    module docstring). Streams that follow several jobs share one ``wakeup`` and one budget
    among their inboxes."""

    __slots__ = ("behind", "budget", "items", "queued", "wakeup")

    def __init__(self, wakeup: Wakeup | None = None, budget: InboxBudget | None = None) -> None:
        # Made on the first delivery: a stream written to directly may never need it.
        self.items: deque[EncodedEvent] | None = None
        self.queued = 0  # bytes in items
        self.behind = 0  # > 0: read everything up to this seq from the database
        self.wakeup = wakeup or Wakeup()
        self.budget = budget or InboxBudget()

    def deliver(self, item: EncodedEvent, now: float) -> None:
        if self.behind:
            self.behind = item.event.seq
        else:
            size = len(item.chunk)
            budget = self.budget
            if budget.used + size > budget.limit:
                self._overflow(item.event.seq)
            else:
                if self.items is None:
                    self.items = deque()
                self.items.append(item)
                self.queued += size
                budget.used += size
        self.wakeup.set()

    def deliver_many(self, items: Sequence[EncodedEvent], now: float) -> None:
        for item in items:
            self.deliver(item, now)

    def miss(self, seq: int) -> None:
        """Event ``seq`` could not be taken: the stream reads it, and anything queued after it,
        from the database."""
        self._overflow(max(seq, self.behind))
        self.wakeup.set()

    def _overflow(self, seq: int) -> None:
        self.behind = seq
        if self.items:
            self.items.clear()
        self.budget.used -= self.queued
        self.queued = 0

    def take(self) -> list[EncodedEvent]:
        """Every queued event, oldest first (their bytes leave the budget)."""
        items = self.items
        if not items:
            return []
        taken = list(items)
        items.clear()
        self.budget.used -= self.queued
        self.queued = 0
        return taken

    def take_behind(self) -> int:
        """The seq to read up to from the database (0: nothing to read)."""
        behind, self.behind = self.behind, 0
        return behind

    @property
    def pending(self) -> bool:
        return bool(self.items) or bool(self.behind)

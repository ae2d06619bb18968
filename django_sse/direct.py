"""Writing live events straight to the server, for streams that are caught up.

A ``DirectWriter`` belongs to one job stream whose request went through
``django_sse.asgi.DirectWriteMiddleware``. Once the stream leaves Django's response loop it
subscribes the writer to the hub in place of its inbox (``feed.Subscriber``): while the stream
waits for events, the writer sends each new event's chunk (encoded once by the hub) with the
server's ``send``: no task wakes up and Django's response loop is not involved.

The writer only writes when nothing can go wrong by doing so at once: the event is the next
one, no earlier write is still in flight, the server is taking data for this client, the
stream's authorization is fresh (``ending.Guard``) and, on a server that does not say whether
its client reads, the stream's byte budget allows it. Otherwise it declines, puts the
event in the stream's inbox (bounded in bytes, ``inbox.Inbox``), and the stream's own task
takes over: it first settles the write in flight (within ``SEND_TIMEOUT_SECONDS``, see
``sink.Sink.wait``), so the order of the chunks on the wire is always the order of the events.
A stream whose client stops reading thus holds at most one chunk here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from django_sse.conf import conf
from django_sse.ending import Guard, StreamClosed
from django_sse.fastpaths.eager_send import start_send
from django_sse.inbox import EncodedEvent, Inbox
from django_sse.sink import Sink, body_message

logger = logging.getLogger("django_sse")


class DirectWriter:
    """Direct writes of one stream's live events. See the module docstring."""

    __slots__ = (
        "active",
        "allowance",
        "bytes",
        "error",
        "finished",
        "guard",
        "inbox",
        "inflight",
        "last_seq",
        "sent",
        "sink",
        "wakeup",
    )

    def __init__(self, sink: Sink, inbox: Inbox, guard: Guard) -> None:
        self.sink = sink
        self.inbox = inbox  # the stream's: what the writer does not write goes there
        self.wakeup = inbox.wakeup  # set when the stream's task must take over
        self.guard = guard
        self.active = False  # the stream is waiting and caught up: the hub may write
        self.last_seq = 0
        self.sent = 0
        self.bytes = 0
        self.finished = False  # a terminal event was written
        self.error: BaseException | None = None
        self.inflight: asyncio.Future[None] | None = None
        # Bytes it may write before the stream's task takes over (None: no limit). Set where
        # nothing tells the stream whether its client reads (see streaming.py).
        self.allowance: int | None = None

    def deliver(self, item: EncodedEvent, now: float) -> None:
        """The hub's side: write the event now if it may go, else leave it in the inbox."""
        if self.active:
            try:
                if self.write(item.event.seq, item.chunk, item.terminal, now):
                    return
            except Exception as exc:
                # A bug, not a client gone (``write`` catches the server's errors): this stream
                # ends (its browser resumes from what it got); the others go on.
                logger.exception("Writing event %d to a stream failed.", item.event.seq)
                self.fail(exc)
                return
        self.inbox.deliver(item, now)

    def deliver_many(self, items: Sequence[EncodedEvent], now: float) -> None:
        """The hub's side for several events in order (a batch): written as one chunk, one
        send, if they are consecutive and may go now; else left in the inbox."""
        if self.active:
            newer = [item for item in items if item.event.seq > self.last_seq]
            if not newer:
                return  # all sent already (read from the database during the replay)
            if sum(len(item.chunk) for item in newer) > conf.MAX_BUFFERED_BYTES // 4:
                # Larger than an inbox may hold: one event at a time, each written only while
                # the server takes data (the server must never hold more than that for a
                # client that stopped reading).
                for item in newer:
                    self.deliver(item, now)
                return
            first, last = newer[0].event.seq, newer[-1].event.seq
            if last - first + 1 == len(newer):
                chunk = b"".join(item.chunk for item in newer)
                terminal = any(item.terminal for item in newer)
                try:
                    if self.write(last, chunk, terminal, now, count=len(newer)):
                        return
                except Exception as exc:
                    logger.exception("Writing events %d to %d to a stream failed.", first, last)
                    self.fail(exc)
                    return
            else:
                self._hand_over()  # a hole the database has: the stream's task decides
            items = newer
        for item in items:
            self.inbox.deliver(item, now)

    def miss(self, seq: int) -> None:
        """Event ``seq`` could not be taken: the stream's task reads it from the database."""
        self._hand_over()
        self.inbox.miss(seq)

    def write(self, seq: int, chunk: bytes, terminal: bool, now: float, count: int = 1) -> bool:
        """Write the ``count`` consecutive events up to ``seq`` (their bytes: ``chunk``) if
        they are the next ones and may go now. False: not handled; the stream's task takes
        over."""
        if seq <= self.last_seq:
            return True  # already sent (read from the database during the replay)
        # Only the next events: the hub hands them out in order (feed.py), so anything else is
        # a hole the database itself has. A chunk written here cannot be taken back: the
        # stream's task, not the hub's, sends whatever needs a decision.
        if (
            seq - count + 1 != self.last_seq + 1
            or self.inflight is not None
            or not self.sink.writable
            or not self.guard.fresh(now)
            or (self.allowance is not None and self.bytes + len(chunk) > self.allowance)
        ):
            self._hand_over()
            return False
        self.last_seq = seq
        self.sent += count
        self.bytes += len(chunk)
        try:
            # A message of its own: an ASGI middleware around ours may change the one it gets.
            pending = start_send(self.sink.raw(body_message(chunk)))
        except Exception as exc:
            self.fail(exc)
            return True
        if pending is not None:
            # The server holds the write back: the stream's task waits for it, within its
            # bounds, from now on (not from its next deadline).
            self.inflight = pending
            pending.add_done_callback(self._finished_write)
            self._hand_over()
        if terminal:
            self.finished = True
            self._hand_over()
        return True

    def _finished_write(self, pending: asyncio.Future[None]) -> None:
        if self.inflight is pending:
            self.inflight = None
        if not pending.cancelled() and pending.exception() is not None:
            self.fail(pending.exception())  # type: ignore[arg-type]

    def _hand_over(self) -> None:
        self.active = False
        self.wakeup.set()

    def fail(self, exc: BaseException) -> None:
        """End direct writing on ``exc``: the stream's task wakes up and ends the stream."""
        if self.error is None:
            self.error = exc
        self._hand_over()

    async def settle(self) -> None:
        """Wait for the write in flight, if any (the stream's task is about to write), within
        the stream's bounds: raises ``StreamClosed`` if the client does not take it in time."""
        inflight = self.inflight
        if inflight is None:
            return
        try:
            await self.sink.wait(inflight)
        except StreamClosed:
            raise
        except Exception as exc:  # the server's send failed
            self.fail(exc)
        finally:
            if self.inflight is inflight:
                self.inflight = None

    def cancel(self) -> None:
        """The stream is over: stop writing (a write in flight is abandoned)."""
        self.active = False
        if self.inflight is not None:
            self.inflight.cancel()
            self.inflight = None

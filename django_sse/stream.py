"""The stream of one job: replay from the database, then live events from the hub.

The hub hands the stream every event committed after it subscribed, in order, exactly once
(``feed.py`` owns that guarantee). The stream subscribes *before* its replay, so that nothing
falls between the two, and keeps the ``seq`` of the last event it sent (its cursor): the live
events its replay already read from the database are skipped. That is the one ordering check a
stream makes, and it cannot go: the replay and the hub race by design. It holds no thread and
no database connection of its own while idle. Its life cycle (heartbeats, the authorization
deadline, bounds, the close) is ``streaming.py``'s.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

from django_sse.admission import Ticket
from django_sse.auth import Access, reauthorize_stream, reauthorize_streams
from django_sse.conf import conf
from django_sse.database import Batch, run_bulk_in_db_thread
from django_sse.direct import DirectWriter
from django_sse.ending import CloseReason, StreamClosed
from django_sse.fastpaths.replay_sql import PageAsk
from django_sse.fastpaths.ssetext import encode_stored_events
from django_sse.hub import Hub, get_hub
from django_sse.inbox import EncodedEvent, Inbox
from django_sse.lifecycle import TERMINAL_TYPES
from django_sse.replay import (
    FIRST_PAGE_EVENTS,
    Page,
    StoredEvent,
    fetch_page,
    fetch_pages,
    next_page_limit,
)
from django_sse.streaming import EventStream

if TYPE_CHECKING:
    from django.http import HttpRequest

    from django_sse.identity import Identity
    from django_sse.sink import Sink


def read_first_pages(asks: list[PageAsk]) -> list[Page]:
    """The first pages of streams starting their replays together: one page alone by the
    one-job query, more with one query for all (``replay.fetch_pages``)."""
    if len(asks) == 1:
        ((job_id, after, upto, limit, max_bytes),) = asks
        return [fetch_page(job_id, after, upto=upto, limit=limit, max_bytes=max_bytes)]
    return fetch_pages(asks)


# A replay page, so on the bulk lane: urgent calls still go first (database.py).
first_pages: Batch[PageAsk, Page] = Batch(read_first_pages, bulk=True)


def recheck_streams(
    asks: list[tuple[HttpRequest, uuid.UUID, Identity]],
) -> Sequence[bool | BaseException]:
    """The session checks of streams whose deadlines fall together: one alone by
    ``reauthorize_stream``, more with one query for their jobs (``reauthorize_streams``)."""
    if len(asks) == 1:
        return [reauthorize_stream(*asks[0])]
    return reauthorize_streams(asks)


# Streams that opened together reach their deadlines together: checked together.
rechecks: Batch[tuple[HttpRequest, uuid.UUID, Identity], bool] = Batch(recheck_streams)


class JobStream(EventStream):
    """The body of one SSE response for one job."""

    def __init__(
        self,
        request: HttpRequest,
        access: Access,
        resume_from: int,
        ticket: Ticket,
        checked_at: float | None = None,
        *,
        sink: Sink | None = None,
    ) -> None:
        super().__init__(request, access.identity, ticket, checked_at, sink=sink)
        # The job's id, not its model instance: thousands of these may be open per process.
        self.job_id: uuid.UUID = access.job.pk
        self.last_seq = resume_from
        self.resumed_from = resume_from
        self.hub: Hub | None = None  # the hub it subscribed at (cleanup leaves that one)
        self.inbox = Inbox(self.wakeup)
        self.subscribed = False
        # Subscribed in place of the inbox once the stream left Django's response loop.
        self.writer: DirectWriter | None = None

    def describe(self) -> str:
        return f"Stream of job {self.job_id}"

    def opened_fields(self) -> str:
        return f"job={self.job_id} user={self.identity.label} resume={self.resumed_from}"

    def closed_fields(self) -> str:
        return f"job={self.job_id} user={self.identity.label} events={self.sent}"

    async def authorize(self) -> bool:
        return await rechecks.run((self.request, self.job_id, self.identity))

    async def subscribe(self) -> None:
        self.hub = get_hub()
        await self.hub.subscribe(self.job_id, self.inbox)
        self.subscribed = True

    def cleanup(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
        if self.hub is not None and self.subscribed:
            self.hub.unsubscribe(self.job_id, self.writer or self.inbox)

    # -- encoding ----------------------------------------------------------------------------

    async def encode_page(self, events: list[StoredEvent]) -> bytes:
        """A page of stored events as one chunk."""
        return self._encode(events)

    async def encode_live(self, items: list[EncodedEvent]) -> bytes:
        """Live events as one chunk: encoded once by the hub, for every stream."""
        return b"".join(item.chunk for item in items)

    def _encode(self, events: list[StoredEvent]) -> bytes:
        """Stored events after ``last_seq`` (up to the job's last) as one chunk."""
        selected: list[StoredEvent] = []
        last_seq, finished = self.last_seq, False
        for event in events:
            if event.seq <= last_seq:
                continue
            selected.append(event)
            last_seq = event.seq
            if event.type in TERMINAL_TYPES:
                finished = True
                break
        chunk = encode_stored_events(selected)
        self.last_seq = last_seq
        self.sent += len(selected)
        self.finished = self.finished or finished
        return chunk

    # -- reading -------------------------------------------------------------------------------

    def replay(self) -> AsyncGenerator[bytes, None]:
        return self._read()

    async def _read(self, upto: int | None = None) -> AsyncGenerator[bytes, None]:
        """Stored events after ``last_seq`` (up to ``upto``), a page per chunk. A page holds at
        most ``REPLAY_PAGE_SIZE`` events and a quarter of ``MAX_BUFFERED_BYTES``; the next page
        is read while this one is sent (two pages in memory at most)."""
        if self.finished:
            return
        job_id, most = self.job_id, conf.REPLAY_PAGE_SIZE
        max_bytes = conf.MAX_BUFFERED_BYTES // 4
        # Read with those of the streams starting theirs now (a storm of reconnections).
        page = await first_pages.run(
            (job_id, self.last_seq, upto, min(most, FIRST_PAGE_EVENTS), max_bytes)
        )
        following: asyncio.Future[Page] | None = None
        try:
            while page.events:
                if page.more:
                    following = asyncio.ensure_future(
                        run_bulk_in_db_thread(
                            fetch_page,
                            job_id,
                            page.events[-1].seq,
                            upto=upto,
                            limit=next_page_limit(page, max_bytes, most),
                            max_bytes=max_bytes,
                        )
                    )
                chunk = await self.encode_page(page.events)
                if chunk:
                    yield chunk
                if following is None or self.finished:
                    return
                page = await following
                following = None
        finally:
            if following is not None:
                following.cancel()

    async def drain(self) -> AsyncGenerator[bytes, None]:
        inbox = self.inbox
        while not self.finished:
            behind = inbox.take_behind()
            if behind > self.last_seq:
                # The inbox overflowed: what it dropped is in the database.
                async with aclosing(self._read(upto=behind)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                continue
            run: list[EncodedEvent] = []  # sent as one chunk
            for item in inbox.take():
                seq = item.event.seq
                if seq <= self.last_seq:
                    continue  # the replay read it from the database first
                run.append(item)
                self.last_seq = seq
                self.sent += 1
                if item.terminal:
                    self.finished = True
                    break
            if not run:
                return
            yield await self.encode_live(run)

    # -- direct writes -----------------------------------------------------------------------

    def detach(self, sink: Sink) -> None:
        if self.hub is not None and self.subscribed:
            self.writer = DirectWriter(sink, self.inbox, self.guard)
            self.hub.replace(self.job_id, self.inbox, self.writer)

    async def wait(self, deadline: float) -> None:
        """With a writer: let the hub write events directly until the stream's task has
        something to do. Everything sent before is on the wire (the response loop asked for
        the next chunk), so the writer starts after ``last_seq``."""
        writer = self.writer
        if writer is None:
            await super().wait(deadline)
            return
        if self.inbox.pending:
            return
        writer.last_seq = self.last_seq
        budget = self.byte_budget
        writer.allowance = None if budget is None else budget - self.bytes
        writer.active = True
        try:
            await super().wait(deadline)
        finally:
            writer.active = False
            self.last_seq = writer.last_seq
            self.sent += writer.sent
            self.bytes += writer.bytes
            writer.sent = writer.bytes = 0
        # Whatever the task sends next goes after the writes already made.
        await writer.settle()
        if writer.error is not None:
            raise StreamClosed(CloseReason.WRITE_FAILED, writer.error.__class__.__name__)
        if writer.finished:
            self.finished = True

"""One open stream: replay from the database, then live events from the hub, with heartbeats.

The stream keeps the ``seq`` of the last event it sent: anything at or below it is skipped (no
duplicates), and anything that skips ahead is preceded by the missing events read from the
database (no loss). It holds no thread and no database connection of its own while idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from django.db import DatabaseError

from django_sse.asgi import DETACH, Sink, stream_body
from django_sse.auth import Access, reauthorize_stream
from django_sse.conf import conf
from django_sse.database import run_in_db_thread
from django_sse.direct import DirectWriter
from django_sse.hub import Delivery, Subscriber, get_hub
from django_sse.queries import StoredEvent, fetch_events
from django_sse.sse import HEARTBEAT, encode_event, encode_retry
from django_sse.threads import release_request_thread
from django_sse.validation import EVENT_TYPE_RE, TERMINAL_TYPES

if TYPE_CHECKING:
    from django.http import HttpRequest

logger = logging.getLogger("django_sse")


def describe_user(user: object) -> str:
    """A user id for log lines, or "anonymous"."""
    if user is not None and getattr(user, "is_authenticated", False):
        return str(getattr(user, "pk", "?"))
    return "anonymous"


class JobStream:
    """The body of one SSE response for one job."""

    # Kept small: thousands of these may be open per process. The stream keeps the job's id and
    # the identity it was opened with, not the ``Access`` (the job's model instance).
    __slots__ = ("job_id", "last_seq", "reason", "request", "sent", "session_key", "user")

    # Behind ``DirectWriteMiddleware``, live events may be written by the hub straight to the
    # server (``direct.py``) and the middleware takes the caught-up stream over from Django
    # (``asgi.Body``): only for streams whose live chunk is the hub's own encoding and which
    # depend on nothing Django activated for the request (the language, say).
    direct_writes = True

    def __init__(self, request: HttpRequest, access: Access, resume_from: int) -> None:
        self.request = request
        self.job_id = access.job.pk
        self.user = describe_user(access.user)
        self.session_key = access.session_key
        self.last_seq = resume_from
        self.sent = 0
        self.reason = "client went away"

    def body(self) -> AsyncIterator[bytes]:
        """The response's body. Behind ``DirectWriteMiddleware`` it leaves Django's response loop
        once the stream has caught up (see ``asgi.Body``); otherwise it is ``events()``."""
        if not self.direct_writes:
            return self.events()
        return stream_body(self.events)

    async def events(self, sink: Sink | None = None) -> AsyncIterator[bytes]:
        """The stream's chunks. With a ``sink`` (the body is a ``Body``): caught up, the
        stream's live events are written by the hub, and the rest of the body is sent by the
        middleware."""
        job_id = self.job_id
        opened = time.monotonic()
        # The middleware has run: the request's thread is of no more use to us, nor is the
        # URL resolution (kept by the request for as long as the stream lasts otherwise),
        # unless an AUTHORIZE callable may read it at each re-authorization.
        await release_request_thread()
        if conf.AUTHORIZE is None:
            self.request.resolver_match = None
        hub = get_hub()
        subscriber: Subscriber | None = None
        logger.info(
            "Stream opened: job=%s user=%s resume=%s",
            job_id,
            self.user,
            self.last_seq,
        )
        try:
            # First, so that even a stream cut short by a failure tells the browser when to
            # come back.
            retry = encode_retry(conf.RETRY_MILLISECONDS)
            if sink is not None:
                sink.expect(retry)
            yield retry
            subscriber = await hub.subscribe(job_id)
            async for chunk in self._read():
                yield chunk
            if self.reason == "job finished":
                return
            if sink is not None and sink.verified:
                subscriber.writer = DirectWriter(sink.raw, subscriber.wakeup)
                # Everything Django was given is sent: let the middleware take over.
                yield DETACH
            async for chunk in self._live(subscriber):
                yield chunk
        except DatabaseError as exc:
            # The browser reconnects after a normal end and resumes from its last id.
            self.reason = f"database error ({exc.__class__.__name__})"
            logger.warning("Stream of job %s ends on a database error: %r", job_id, exc)
        finally:
            if subscriber is not None:
                hub.unsubscribe(subscriber)
            logger.info(
                "Stream closed: job=%s user=%s events=%d duration=%.1fs reason=%s",
                job_id,
                self.user,
                self.sent,
                time.monotonic() - opened,
                self.reason,
            )

    def _encode(self, events: list[StoredEvent]) -> bytes:
        """A page of stored events as one chunk (a replay runs through here: keep it lean)."""
        parts: list[str] = []
        plain_types: set[str] = set()  # types known to need no check
        last_seq = self.last_seq
        sent = 0
        for seq, type_, data in events:
            if seq <= last_seq:
                continue
            if type_ not in plain_types and EVENT_TYPE_RE.match(type_):
                plain_types.add(type_)
            if type_ in plain_types and "\n" not in data and "\r" not in data:
                # What encode_event() makes of it (JSON text is always one line).
                parts.append(f"id: {seq}\nevent: {type_}\ndata: {data}\n\n")
            else:
                parts.append(encode_event(data, event=type_, id=seq).decode("utf-8"))
            last_seq = seq
            sent += 1
            if type_ in TERMINAL_TYPES:
                self.reason = "job finished"
                break
        self.last_seq = last_seq
        self.sent += sent
        return "".join(parts).encode("utf-8")

    def _live_chunk(self, delivery: Delivery) -> bytes:
        """The bytes of a live event: encoded once by the hub, for every stream."""
        return delivery.chunk

    async def _read(self, upto: int | None = None) -> AsyncIterator[bytes]:
        """Stored events after ``last_seq`` (up to ``upto``), a page per chunk."""
        page = conf.REPLAY_PAGE_SIZE
        job_id = self.job_id
        if self.reason == "job finished":
            return
        events = await run_in_db_thread(fetch_events, job_id, self.last_seq, upto=upto, limit=page)
        following: asyncio.Future[list[StoredEvent]] | None = None
        try:
            while events:
                if len(events) == page:
                    # A full page: the next one is read on the database thread while this one
                    # is encoded and sent (at most two pages in memory).
                    following = asyncio.ensure_future(
                        run_in_db_thread(
                            fetch_events, job_id, events[-1].seq, upto=upto, limit=page
                        )
                    )
                chunk = self._encode(events)
                if chunk:
                    yield chunk
                if following is None or self.reason == "job finished":
                    return
                events = await following
                following = None
        finally:
            if following is not None:
                following.cancel()

    async def _live(self, subscriber: Subscriber) -> AsyncIterator[bytes]:
        heartbeat = conf.HEARTBEAT_SECONDS
        loop = asyncio.get_running_loop()
        beat_due = False

        def beat() -> None:
            nonlocal beat_due
            beat_due = True
            subscriber.wakeup.set()

        # One timer per heartbeat period, not a wait_for() (a task and a timer) per event.
        timer = loop.call_later(heartbeat, beat)
        writer = subscriber.writer
        try:
            while True:
                if not subscriber.items and not beat_due:
                    if writer is None:
                        # Our own Event: safe to cancel (the hub's layer receive never is).
                        await subscriber.wakeup.wait()
                    elif not await self._wait_writing(subscriber, writer):
                        return
                subscriber.wakeup.clear()
                parts: list[bytes] = []
                while subscriber.items and self.reason != "job finished":
                    delivery = subscriber.items.popleft()
                    seq = delivery.event.seq
                    if seq <= self.last_seq:
                        continue
                    if seq > self.last_seq + 1:
                        async for missing in self._read(upto=seq - 1):
                            parts.append(missing)
                    parts.append(self._live_chunk(delivery))
                    self.last_seq = seq
                    self.sent += 1
                    if delivery.terminal:
                        self.reason = "job finished"
                if parts:
                    # Several pending events leave as one chunk.
                    yield b"".join(parts)
                if self.reason == "job finished":
                    return
                if beat_due:
                    beat_due = False
                    allowed = await run_in_db_thread(
                        reauthorize_stream,
                        self.request,
                        self.job_id,
                        self.session_key,
                    )
                    if not allowed:
                        self.reason = "access revoked"
                        logger.info("Stream of job %s: access revoked, closing.", self.job_id)
                        return
                    yield HEARTBEAT
                    timer = loop.call_later(heartbeat, beat)
        finally:
            timer.cancel()
            if writer is not None:
                writer.cancel()

    async def _wait_writing(self, subscriber: Subscriber, writer: DirectWriter) -> bool:
        """Let the hub write events directly until the stream's task has something to do.

        Everything Django sent is on the wire (the response loop asked for the next chunk),
        so the writer starts after ``last_seq``. False: the stream is over (the job ended or a
        write failed).
        """
        writer.last_seq = self.last_seq
        writer.active = True
        try:
            await subscriber.wakeup.wait()
        finally:
            writer.active = False
            self.last_seq = writer.last_seq
            self.sent += writer.sent
            writer.sent = 0
        # Whatever the task sends next goes after the writes already made.
        await writer.settle()
        if writer.error is not None:
            self.reason = f"write failed ({writer.error.__class__.__name__})"
            return False
        if writer.finished:
            self.reason = "job finished"
            return False
        return True

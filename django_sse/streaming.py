"""The life of one open stream, shared by every kind of stream.

A stream opens (logged), tells the browser when to come back (``retry:``), joins the hub, sends
what the browser missed (the replay), leaves Django's response loop once caught up (behind
``DirectWriteMiddleware``), sends live events, and every ``HEARTBEAT_SECONDS`` checks the
session again and sends a ``: ping``. It closes when the job ends, the client leaves, the session
is revoked, the client does not keep up, or the database fails, and logs why (a
``CloseReason``). ``stream.JobStream`` (one job), ``fragments.FragmentStream`` (one job as HTML)
and ``session_stream.SessionStream`` (all of a visitor's jobs) supply only what differs: which
events, how they are encoded, how access is checked.

The bounds live here, so no kind of stream can forget them:

- **Authorization deadline.** Every chunk is preceded by ``guard.ensure()``: nothing leaves
  unless the session was checked within ``HEARTBEAT_SECONDS`` (``ending.py``).
- **Bytes.** Behind the middleware, on a server that applies back-pressure, the sink makes each
  chunk wait for the client (``sink.py``); replay pages and the live inbox are sized in bytes
  (a quarter of ``MAX_BUFFERED_BYTES`` each). Without either, nothing tells the stream whether
  its client reads, so a connection may carry ``MAX_BUFFERED_BYTES`` in all: then the stream
  ends and the browser resumes from its last id.
- **Visitors.** The stream holds an admission ticket (``admission.py``), given back when it
  closes, or when Django closes a response whose stream never started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, ClassVar

from django.db import DatabaseError

from django_sse import metrics
from django_sse.admission import Ticket
from django_sse.conf import conf
from django_sse.detach import DETACH, Body
from django_sse.ending import CloseReason, Guard, StreamClosed
from django_sse.fastpaths.asgiref_threads import release_request_thread
from django_sse.sse import HEARTBEAT, encode_retry
from django_sse.wakeup import Wakeup

if TYPE_CHECKING:
    from django.http import HttpRequest

    from django_sse.identity import Identity
    from django_sse.sink import Sink

logger = logging.getLogger("django_sse")

# Logged once per process: streams served without DirectWriteMiddleware.
_unbounded_logged = False


class EventStream:
    """The skeleton of a stream; subclasses supply the hooks below the ``events()`` loop."""

    # Leave Django's response loop once caught up (behind the middleware): streams whose chunks
    # depend on nothing Django activated for the request (the language, say).
    detachable: ClassVar[bool] = True
    # The name at the start of the stream's log lines.
    kind: ClassVar[str] = "Stream"
    # The "kind" label of its metrics (metrics.py).
    metric_kind: ClassVar[str] = "job"

    def __init__(
        self,
        request: HttpRequest,
        identity: Identity,
        ticket: Ticket,
        checked_at: float | None = None,
        *,
        sink: Sink | None = None,
    ) -> None:
        """``checked_at``: the loop time at which the view's authorization began (the first
        deadline counts from it). ``sink``: the request's, when it came through
        ``DirectWriteMiddleware`` (the view finds it, ``sink.request_sink``)."""
        self.request = request
        self.checked_at = checked_at
        self.identity = identity
        self.ticket = ticket
        self.sink = sink
        self.guard = Guard(self.authorize)
        self.wakeup = Wakeup()
        self.reason = CloseReason.CLIENT_LEFT
        self.detail = ""
        self.finished = False  # nothing more will come (the job ended)
        self.sent = 0  # events
        self.bytes = 0
        # Bytes a connection may carry in all (None: no such limit), see _byte_budget().
        self.byte_budget: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- hooks -----------------------------------------------------------------------------

    async def authorize(self) -> bool:
        """Whether the stream may go on (asked on the database thread at each deadline)."""
        raise NotImplementedError

    async def subscribe(self) -> None:
        """Join the hub before the replay: every event committed from now on is delivered."""

    def replay(self) -> AsyncGenerator[bytes, None]:
        """What the browser missed, in chunks of at most a page."""
        raise NotImplementedError

    def drain(self) -> AsyncGenerator[bytes, None]:
        """The live events that arrived, gaps filled from the database, in chunks."""
        raise NotImplementedError

    async def wait(self, deadline: float) -> None:
        """Wait until there is something to drain, or the loop time ``deadline``."""
        loop = asyncio.get_running_loop()
        if self._timer is None or self._timer_at != deadline:
            # One timer per deadline, not a wait_for() (a task and a timer) per wakeup.
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = loop.call_at(deadline, self._timer_fired), deadline
        await self.wakeup.wait()
        self.wakeup.clear()

    def _timer_fired(self) -> None:
        # Forgotten first: a timer that fired a hair early (uvloop rounds to milliseconds)
        # is armed again for the same deadline, never left unarmed.
        self._timer = None
        self.wakeup.set()

    def detach(self, sink: Sink) -> None:
        """The stream is about to leave Django's response loop."""

    def cleanup(self) -> None:
        """Leave the hub (the stream is over)."""

    def describe(self) -> str:
        """The stream, for a sentence in a log line."""
        return f"{self.kind} of user {self.identity.label}"

    def opened_fields(self) -> str:
        return f"user={self.identity.label}"

    def closed_fields(self) -> str:
        return f"user={self.identity.label} events={self.sent}"

    # -- the skeleton ----------------------------------------------------------------------

    def body(self) -> Body:
        """The response's body."""
        return Body(self.events(), self.sink, self.release)

    def release(self) -> None:
        """Give the admission ticket back (idempotent)."""
        self.ticket.release()

    async def events(self) -> AsyncGenerator[bytes, None]:
        sink = self.sink
        loop = asyncio.get_running_loop()
        opened = loop.time()
        # The middleware has run: the request's thread is of no more use to us, nor is the
        # URL resolution (kept by the request for as long as the stream lasts otherwise),
        # unless an AUTHORIZE callable may read it at each re-authorization.
        await release_request_thread()
        if conf.AUTHORIZE is None:
            self.request.resolver_match = None
        self.guard.start(self.checked_at)
        if sink is not None:
            sink.attach(self.guard)
        budget = self.byte_budget = self._byte_budget(sink)
        logger.info("%s opened: %s", self.kind, self.opened_fields())
        metrics.stream_opened(self.metric_kind)
        try:
            # First, so that even a stream cut short by a failure tells the browser when to
            # come back.
            retry = encode_retry(conf.RETRY_MILLISECONDS)
            if sink is not None:
                sink.expect(retry)
            yield retry
            self._check_sink()
            await self.subscribe()
            async with aclosing(metrics.counted(self, self.replay(), replay=True)) as chunks:
                async for chunk in chunks:
                    yield await self._checked(chunk, budget)
                    self._check_sink()
            if self.finished:
                self.reason = CloseReason.JOB_FINISHED
                return
            if sink is not None and sink.verified and self.detachable:
                self.detach(sink)
                # Everything Django was given is sent: let the middleware take over.
                yield DETACH
            async with aclosing(metrics.counted(self, self._live())) as chunks:
                async for chunk in chunks:
                    yield await self._checked(chunk, budget)
                    self._check_sink()
            # The live loop only ends once the job has.
            self.reason = CloseReason.JOB_FINISHED
        except StreamClosed as exc:
            self.reason, self.detail = exc.reason, exc.detail
        except DatabaseError as exc:
            # The browser reconnects after a normal end and resumes from its last id.
            self.reason, self.detail = CloseReason.DATABASE_ERROR, exc.__class__.__name__
            logger.warning("%s ends on a database error: %r", self.describe(), exc)
        except Exception as exc:
            # A bug (ours, or an AUTHORIZE callable's, a session engine's): this stream ends,
            # its browser resumes; the traceback is in the log, not in the server's.
            self.reason, self.detail = CloseReason.ERROR, exc.__class__.__name__
            logger.exception("%s ends on an error.", self.describe())
        finally:
            if sink is not None:
                if sink.ended is not None and self.reason is CloseReason.CLIENT_LEFT:
                    self.reason = sink.ended
                sink.release()
            if self._timer is not None:
                self._timer.cancel()
            self.cleanup()
            self.release()
            metrics.stream_closed(self.metric_kind, self.reason.value)
            reason = self.reason.value + (f" ({self.detail})" if self.detail else "")
            logger.info(
                "%s closed: %s bytes=%d duration=%.1fs reason=%s",
                self.kind,
                self.closed_fields(),
                self.bytes,
                loop.time() - opened,
                reason,
            )

    def _byte_budget(self, sink: Sink | None) -> int | None:
        """The bytes a connection may carry when nothing tells the stream whether its client
        reads (no middleware, or a server we do not know); None where something does."""
        global _unbounded_logged
        if sink is not None and sink.backpressure:
            return None
        if not _unbounded_logged:
            _unbounded_logged = True
            logger.warning(
                "Streams are served %s: each connection ends after MAX_BUFFERED_BYTES "
                "(%d bytes) and the browser resumes from its last id.",
                "by a server django_sse cannot read back-pressure from"
                if sink is not None
                else "without django_sse.asgi.DirectWriteMiddleware",
                conf.MAX_BUFFERED_BYTES,
            )
        return conf.MAX_BUFFERED_BYTES

    async def _checked(self, chunk: bytes, budget: int | None) -> bytes:
        """``chunk``, once the stream may send it."""
        await self.guard.ensure()
        self.bytes += len(chunk)
        if budget is not None and self.bytes > budget and self.bytes > len(chunk):
            # Not sent: the browser resumes from the last event it got.
            raise StreamClosed(CloseReason.BYTE_BUDGET)
        return chunk

    def _check_sink(self) -> None:
        sink = self.sink
        if sink is not None and sink.ended is not None:
            raise StreamClosed(sink.ended)

    async def _live(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        # The first heartbeat falls on the authorization's deadline, where the session is
        # checked anyway: one check per period from the start, not an extra one before it.
        next_beat = self.guard.until or loop.time() + conf.HEARTBEAT_SECONDS
        while True:
            async with aclosing(self.drain()) as chunks:
                async for chunk in chunks:
                    yield chunk
            if self.finished:
                return
            now = loop.time()
            if now >= next_beat:
                # The session is checked at every heartbeat, even if a chunk just did; the
                # next heartbeat falls on the new deadline (one check per period).
                await self.guard.recheck()
                yield HEARTBEAT
                next_beat = self.guard.until
            elif now >= self.guard.until:
                await self.guard.recheck()
            else:
                await self.wait(min(next_beat, self.guard.until))

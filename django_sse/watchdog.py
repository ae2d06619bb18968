"""The bounds of one wait of a stream on its client: a send the server holds back, or a write
of the hub's that is still in flight (``sink.Sink.deliver`` and ``sink.Sink.wait``).

A stream task blocked in a send cannot run its heartbeat or its re-authorization, so the
deadlines are enforced around the send: at ``SEND_TIMEOUT_SECONDS`` the wait gives up, and at
the authorization deadline (``ending.Guard``) the session is checked meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from django.db import DatabaseError

from django_sse.conf import conf
from django_sse.ending import CloseReason, Guard, StreamClosed

if TYPE_CHECKING:
    from django_sse.sink import Sink

logger = logging.getLogger("django_sse")


class SendWatchdog:
    """Bounds one wait of a stream's task on its client: at ``SEND_TIMEOUT_SECONDS`` it gives
    up, and at the authorization deadline it has the session checked again meanwhile (a
    revoked session gives up too). Giving up drops the connection, which ends the wait (the
    server's ``send`` returns, Daphne's producer is stopped); where nothing can be dropped (a
    server we do not know) the waiting task is cancelled instead. Either way the wait raises
    ``StreamClosed``."""

    __slots__ = ("cancelled", "check", "give_up", "handle", "loop", "sink", "task")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.loop = asyncio.get_running_loop()
        self.give_up = self.loop.time() + conf.SEND_TIMEOUT_SECONDS
        self.task = asyncio.current_task()
        self.handle: asyncio.TimerHandle | None = None
        self.check: asyncio.Task[None] | None = None
        self.cancelled = False

    async def __aenter__(self) -> SendWatchdog:
        self._arm()
        return self

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if self.handle is not None:
            self.handle.cancel()
        if self.check is not None and not self.check.done():
            self.check.cancel()
        ended = self.sink.ended
        if self.cancelled and isinstance(exc, asyncio.CancelledError):
            # Our own cancellation, not the client leaving: take it back.
            uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
        if ended is not None and (exc is None or self.cancelled):
            raise StreamClosed(ended)
        return False

    def _arm(self) -> None:
        guard = self.sink.guard
        until = self.give_up if guard is None else min(self.give_up, guard.until)
        self.handle = self.loop.call_at(until, self._due)

    def _due(self) -> None:
        self.handle = None
        now = self.loop.time()
        if now >= self.give_up:
            self._stop(CloseReason.SEND_TIMEOUT)
            return
        guard = self.sink.guard
        if guard is not None and now >= guard.until:
            self.check = self.loop.create_task(self._recheck(guard))
            return
        self._arm()

    async def _recheck(self, guard: Guard) -> None:
        try:
            await guard.recheck()
        except StreamClosed as exc:
            self._stop(exc.reason)
            return
        except DatabaseError:
            self._stop(CloseReason.DATABASE_ERROR)
            return
        except Exception:
            logger.exception("Checking the session of a stream failed.")
            self._stop(CloseReason.ERROR)
            return
        self._arm()

    def _stop(self, reason: CloseReason) -> None:
        self.sink.end(reason)
        if not self.sink.aborted and self.task is not None:
            self.cancelled = True
            self.task.cancel()

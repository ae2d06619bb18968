"""How a stream ends: the reasons its log line gives, the exception that carries one, and the
deadline of its authorization.

The deadline is what makes revocation bite. A stream's session was checked at some time ``t``;
nothing may leave for the client after ``t + HEARTBEAT_SECONDS`` until it is checked again. So
after a logout (a session expiry, a password change) at time ``L``, every chunk that leaves was
made before ``L + HEARTBEAT_SECONDS`` and holds only events published before then, whatever the
stream was doing: replaying, sending live events, stalled on a slow client, looking for new
jobs. Every path that hands bytes to the server asks the guard first: the stream before each
chunk it yields, the hub before each direct write (``fresh()``, no waiting), the sink while a
send waits on a client that does not read.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable

from django_sse.conf import conf


class CloseReason(enum.Enum):
    """Why a stream ended, as its ``Stream closed`` log line says (``reason=<value>``)."""

    CLIENT_LEFT = "client went away"
    JOB_FINISHED = "job finished"
    REVOKED = "access revoked"
    SEND_TIMEOUT = "send timed out"
    BYTE_BUDGET = "byte budget spent"
    WRITE_FAILED = "write failed"
    DATABASE_ERROR = "database error"
    ERROR = "error"


class StreamClosed(Exception):
    """Ends a stream with a reason (raised inside django_sse, caught by the stream)."""

    def __init__(self, reason: CloseReason, detail: str = "") -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.detail = detail


class Guard:
    """The authorization deadline of one stream. ``check`` asks the session store (on the
    database thread) whether the stream may go on."""

    __slots__ = ("_check", "until")

    def __init__(self, check: Callable[[], Awaitable[bool]]) -> None:
        self._check = check
        # Loop time until which the last check holds; 0: not authorized yet.
        self.until = 0.0

    def start(self, checked_at: float | None = None) -> None:
        """The view authorized the stream, with a check that began at the loop time
        ``checked_at`` (now, if not given)."""
        if checked_at is None:
            checked_at = asyncio.get_running_loop().time()
        self.until = checked_at + conf.HEARTBEAT_SECONDS

    def fresh(self, now: float) -> bool:
        return now < self.until

    async def ensure(self) -> None:
        """Check again if the deadline has passed; raise ``StreamClosed`` if revoked."""
        if asyncio.get_running_loop().time() >= self.until:
            await self.recheck()

    async def recheck(self) -> None:
        """Check now; the new deadline counts from the moment the check began."""
        started = asyncio.get_running_loop().time()
        if not await self._check():
            self.until = 0.0
            raise StreamClosed(CloseReason.REVOKED)
        self.until = started + conf.HEARTBEAT_SECONDS

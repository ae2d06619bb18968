"""A one-waiter event for the streams' tasks."""

from __future__ import annotations

import asyncio


class Wakeup:
    """``asyncio.Event`` for one waiting task, without its deque of waiters (760 bytes, for every
    open stream): the future exists only while the task waits."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._flag

    @property
    def waiting(self) -> bool:
        """Whether a task waits on it now."""
        return self._waiter is not None

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self) -> None:
        if self._flag:
            return
        if self._waiter is not None:
            raise RuntimeError("Wakeup.wait() is already awaited by another task.")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

"""Starting a server's ``send`` at once, in the caller's task: a direct write's cost per event.

The hub writes a live event to every caught-up stream of its job in one pass. Awaiting each
server's ``send`` in a task of its own (``asyncio.ensure_future``) costs a task and a turn of
the loop per stream and event, when the send almost never waits (the bytes go to the socket's
buffer). ``start_send`` runs the send's coroutine by hand up to its first suspension, as
Python 3.12's eager tasks do (not available on 3.10 and 3.11): a send that does not suspend is
done when it returns, and one that does (back-pressure) is finished in a task, from where it
stopped.

What it relies on: the coroutine protocol (``send``, ``throw``, ``close``), which is public; and
that a server's ``send`` does not care which task runs it up to its first suspension (it runs
in the hub's task, not in a task of its own). Anything but a coroutine takes the plain route,
``start_send_plain``: a task. ``tests/test_fastpaths.py`` checks that both routes send the same
bytes, in the same order, and raise the same errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any


class _SuspendedSend:
    """The rest of a server's ``send`` that ``start_send`` started by hand and that is suspended
    on ``waiting``: awaiting it (in a task) drives the coroutine on to its end, as if it had
    been awaited from the start."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self.coro, self.waiting
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # handed to the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


def start_send(awaitable: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run a server's ``send`` up to its first suspension: usually it never suspends (the bytes
    went to the socket's buffer) and that is the whole write, with no task made for it. If it
    does suspend (back-pressure), it finishes in a task, returned. Errors raised before the
    first suspension are raised here."""
    if not asyncio.iscoroutine(awaitable):
        # Not a coroutine (a server's native awaitable, a future): the plain route.
        return start_send_plain(awaitable)
    try:
        waiting = awaitable.send(None)
    except StopIteration:
        return None
    task = asyncio.ensure_future(_SuspendedSend(awaitable, waiting))
    # A task cancelled before its first step never enters _SuspendedSend: the coroutine, already
    # started, is closed here (its ``finally`` runs now, not when it is collected). A no-op
    # once it has finished.
    task.add_done_callback(lambda _: awaitable.close())
    return task


def start_send_plain(awaitable: Awaitable[None]) -> asyncio.Future[None]:
    """The server's ``send`` in a task of its own."""
    return asyncio.ensure_future(awaitable)

"""The stream database thread: urgent calls go before replay pages."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from django_sse.database import THREAD_NAME, run_bulk_in_db_thread, run_in_db_thread

pytestmark = pytest.mark.asyncio


async def test_an_urgent_call_overtakes_the_replay_pages_queued_before_it() -> None:
    order: list[str] = []
    busy = threading.Event()
    release = threading.Event()

    def first_page() -> None:
        busy.set()
        assert release.wait(5)
        order.append("page 1")

    def page(name: str) -> None:
        order.append(name)

    running = asyncio.ensure_future(run_bulk_in_db_thread(first_page))
    assert await asyncio.get_running_loop().run_in_executor(None, busy.wait, 5)
    queued = [asyncio.ensure_future(run_bulk_in_db_thread(page, f"page {n}")) for n in (2, 3)]
    urgent = asyncio.ensure_future(run_in_db_thread(page, "authorize"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(running, urgent, *queued)
    # The page under way finishes; then the urgent call, then the other pages in order.
    assert order == ["page 1", "authorize", "page 2", "page 3"]


async def test_calls_run_on_the_one_named_thread_and_raise_there() -> None:
    assert await run_in_db_thread(lambda: threading.current_thread().name) == THREAD_NAME
    assert await run_bulk_in_db_thread(lambda: threading.current_thread().name) == THREAD_NAME

    def broken() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await run_in_db_thread(broken)


async def test_a_call_given_up_before_it_ran_does_not_run() -> None:
    ran: list[str] = []
    busy = threading.Event()
    release = threading.Event()

    def hold() -> None:
        busy.set()
        assert release.wait(5)

    holding = asyncio.ensure_future(run_in_db_thread(hold))
    assert await asyncio.get_running_loop().run_in_executor(None, busy.wait, 5)
    given_up = asyncio.ensure_future(run_bulk_in_db_thread(ran.append, "page"))
    await asyncio.sleep(0)
    given_up.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await given_up
    await asyncio.sleep(0)  # the cancel reaches the thread's queue in a callback of the loop
    release.set()
    await holding
    assert await run_in_db_thread(lambda: list(ran)) == []

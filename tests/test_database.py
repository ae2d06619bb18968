"""The stream database threads: urgent calls go before replay pages; DB_THREADS of them."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from django.db import connection
from django.test import override_settings

from django_sse.database import (
    DEFAULT_DB_THREADS,
    DEFAULT_DB_THREADS_SQLITE,
    THREAD_NAME,
    THREAD_NAME_PREFIX,
    aclose_db_thread_connections,
    db_threads,
    run_bulk_in_db_thread,
    run_in_db_thread,
)

pytestmark = pytest.mark.asyncio


def threads(count: int) -> override_settings:
    return override_settings(DJANGO_SSE={"DB_THREADS": count})


@threads(1)
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


@threads(1)
async def test_calls_run_on_the_one_named_thread_and_raise_there() -> None:
    assert await run_in_db_thread(lambda: threading.current_thread().name) == THREAD_NAME
    assert await run_bulk_in_db_thread(lambda: threading.current_thread().name) == THREAD_NAME

    def broken() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await run_in_db_thread(broken)


@threads(1)
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


async def test_db_threads_default_to_one_on_sqlite_and_four_elsewhere() -> None:
    expected = DEFAULT_DB_THREADS_SQLITE if connection.vendor == "sqlite" else DEFAULT_DB_THREADS
    assert (DEFAULT_DB_THREADS_SQLITE, DEFAULT_DB_THREADS) == (1, 4)
    assert db_threads() == expected
    with threads(3):
        assert db_threads() == 3


@threads(3)
async def test_calls_run_side_by_side_on_db_threads_threads() -> None:
    # Each call waits until all three run: it only returns if three threads serve them.
    together = threading.Barrier(3, timeout=5)

    def meet() -> str:
        together.wait()
        return threading.current_thread().name

    names = await asyncio.gather(*(run_in_db_thread(meet) for _ in range(3)))
    assert sorted(names) == [f"{THREAD_NAME_PREFIX}{n}" for n in range(3)]


@threads(2)
async def test_with_several_threads_urgent_calls_still_overtake_queued_pages() -> None:
    order: list[str] = []
    busy = threading.Barrier(3, timeout=5)
    release = threading.Event()

    def first_page(name: str) -> None:
        busy.wait()
        assert release.wait(5)
        order.append(name)

    def page(name: str) -> None:
        order.append(name)

    running = [asyncio.ensure_future(run_bulk_in_db_thread(first_page, f"p{n}")) for n in (1, 2)]
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, busy.wait)  # both threads hold a page
    queued = [asyncio.ensure_future(run_bulk_in_db_thread(page, f"p{n}")) for n in (3, 4, 5)]
    urgent = asyncio.ensure_future(run_in_db_thread(page, "authorize"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*running, urgent, *queued)
    # Whichever thread is free first takes the urgent call before any queued page.
    assert order.index("authorize") < min(order.index(f"p{n}") for n in (3, 4, 5))
    assert sorted(order) == ["authorize", "p1", "p2", "p3", "p4", "p5"]


@pytest.mark.django_db(transaction=True)
@threads(2)
async def test_closing_the_connections_closes_every_threads_connection() -> None:
    together = threading.Barrier(2, timeout=5)

    def connect() -> str:
        together.wait()  # one call on each thread
        connection.ensure_connection()
        return threading.current_thread().name

    names = await asyncio.gather(run_in_db_thread(connect), run_in_db_thread(connect))
    assert len(set(names)) == 2
    await aclose_db_thread_connections()

    def is_open() -> bool:
        together.wait()
        return connection.connection is not None

    still_open = await asyncio.gather(run_in_db_thread(is_open), run_in_db_thread(is_open))
    assert list(still_open) == [False, False]


async def test_a_thread_past_a_lowered_count_ends() -> None:
    with threads(2):
        together = threading.Barrier(2, timeout=5)
        await asyncio.gather(*(run_in_db_thread(together.wait) for _ in range(2)))
    with threads(1):
        assert await run_in_db_thread(lambda: threading.current_thread().name) == THREAD_NAME

        def others() -> list[str]:
            return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while await run_in_db_thread(others) != [THREAD_NAME]:
            assert loop.time() < deadline, await run_in_db_thread(others)
            await asyncio.sleep(0.01)


def db_thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX))


async def test_a_quiet_process_keeps_one_thread_whatever_the_count() -> None:
    loop = asyncio.get_running_loop()
    with threads(1):
        await run_in_db_thread(lambda: None)
        deadline = loop.time() + 5
        while db_thread_names() != [THREAD_NAME]:  # threads of earlier tests end
            assert loop.time() < deadline, db_thread_names()
            await asyncio.sleep(0.01)
    with threads(4):
        for _ in range(20):  # one call at a time: the idle thread takes each
            await run_in_db_thread(lambda: None)
            await run_bulk_in_db_thread(lambda: None)
        assert db_thread_names() == [THREAD_NAME]


@pytest.mark.django_db(transaction=True)
@threads(2)
async def test_a_database_error_on_one_thread_makes_every_thread_start_afresh() -> None:
    from django.db import OperationalError

    together = threading.Barrier(2, timeout=5)

    def connect() -> None:
        together.wait()  # one call on each thread
        connection.ensure_connection()

    await asyncio.gather(run_in_db_thread(connect), run_in_db_thread(connect))

    def lost() -> None:
        raise OperationalError("server closed the connection unexpectedly")

    with pytest.raises(OperationalError):
        await run_in_db_thread(lost)

    def is_open() -> bool:
        together.wait()
        return connection.connection is not None

    # Neither thread runs its next call on the connection it had before the outage.
    still_open = await asyncio.gather(run_in_db_thread(is_open), run_in_db_thread(is_open))
    assert list(still_open) == [False, False]

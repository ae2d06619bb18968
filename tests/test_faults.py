"""Faults end to end: the database goes away under a real Daphne server, a publisher dies.

The server reaches PostgreSQL through a TCP proxy run by the test (``tests/live/tcp_proxy.py``, on
127.0.0.1), which can cut every connection and refuse new ones, then let them through again.
Helper processes (setup, publishers) talk to PostgreSQL directly. The server uses the
in-memory channel layer: events from other processes reach it through the 0.2 s database poll.

Each test prints its figures (events published / received / lost / duplicated).
Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.live import services
from tests.live.e2e_support import (
    LoggedServer,
    daphne,
    pg_connect,
    pg_params,
    pg_url,
    process_env,
    run_database,
)
from tests.live.processes import ROOT, close_pipes, run_id, run_module, wait_until
from tests.live.streams import CONTENT_TYPE, SESSION_COOKIE, Stream, client, open_stream
from tests.live.tcp_proxy import TcpProxy

# Always PostgreSQL (and Redis where needed), whatever DATABASE_URL / REDIS_URL say.
pytestmark = [pytest.mark.e2e, pytest.mark.services, pytest.mark.pgredis]

POLL_SECONDS = 0.2
# Short, so that an idle stream yields a chunk every second and reads stay bounded in time.
HEARTBEAT_SECONDS = 1.0
# Many queries for one replay, so that the database can be cut in the middle of it.
REPLAY_PAGE_SIZE = 100
HISTORY = 20_000
# How long the proxy holds back each answer of the database during the replay (200 pages: ~4 s).
REPLAY_DELAY = 0.02
CUT_AFTER = 2_000
RETRY_BODY = b"retry: 3000\n\n"


class Jobs:
    UNREACHABLE = 0
    REPLAY = 1
    KILLED = 2
    COUNT = 3


@dataclass
class Faults:
    db_name: str
    env: dict[str, str]  # helper processes: straight to PostgreSQL
    proxy: TcpProxy
    server: LoggedServer
    jobs: list[str]

    def commit(self, job_id: str, *args: str) -> list[dict[str, Any]]:
        out = run_module(self.env, "tests.live", "fault", "commit", job_id, *args, timeout=30)
        return [json.loads(line) for line in out.splitlines()]

    def stored(self, job_id: str) -> tuple[list[tuple[int, str]], int]:
        """``[(seq, type)]`` of the job's events and its ``last_seq``."""
        with pg_connect(self.db_name) as conn:
            rows = conn.execute(
                "SELECT seq, type FROM django_sse_jobevent WHERE job_id = %s ORDER BY seq",
                [uuid.UUID(job_id)],
            ).fetchall()
            (last,) = conn.execute(
                "SELECT last_seq FROM django_sse_job WHERE id = %s", [uuid.UUID(job_id)]
            ).fetchone()
        return [(int(seq), str(type_)) for seq, type_ in rows], int(last)


@pytest.fixture(scope="module")
def faults() -> Iterator[Faults]:
    services.require("PostgreSQL", services.DATABASE_URL, 5432)
    with contextlib.ExitStack() as stack:
        db_name = stack.enter_context(run_database("django_sse_faults"))
        common = {
            "DJANGO_SSE_E2E_DB": db_name,
            "DJANGO_SSE_E2E_PREFIX": f"django_sse_faults_{run_id()}",
            "DJANGO_SSE_E2E_POLL_SECONDS": str(POLL_SECONDS),
            "DJANGO_SSE_E2E_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "DJANGO_SSE_E2E_REPLAY_PAGE_SIZE": str(REPLAY_PAGE_SIZE),
        }
        direct = process_env(
            DJANGO_SETTINGS_MODULE="tests.live.e2e_settings", DATABASE_URL=pg_url(), **common
        )
        made = json.loads(
            run_module(direct, "tests.live", "e2e", "setup", "--jobs", str(Jobs.COUNT))
        )
        proxy = stack.enter_context(TcpProxy(pg_params()["port"]))
        server = stack.enter_context(
            daphne(
                process_env(
                    DJANGO_SETTINGS_MODULE="tests.live.fault_settings",
                    DATABASE_URL=pg_url(proxy.port),
                    **common,
                ),
                made["owner_session"],
                made["other_session"],
            )
        )
        yield Faults(db_name, direct, proxy, server, made["jobs"])


# -- reading long streams ---------------------------------------------------------------------


def _pieces(chunk: bytes, size: int = 4096) -> Iterator[bytes]:
    """``chunk`` in pieces of about ``size`` bytes cut after a line feed: the parser copies its
    buffer once per line, which is quadratic on a 64 KiB chunk of small events."""
    start = 0
    while start < len(chunk):
        end = chunk.find(b"\n", start + size)
        if end == -1:
            yield chunk[start:]
            return
        yield chunk[start : end + 1]
        start = end + 1


class BulkStream(Stream):
    """A ``Stream`` for tens of thousands of events: parsed in pieces, raw bytes kept only at
    the start."""

    RAW_LIMIT = 65536

    def take(self, chunk: bytes, now: float) -> None:
        if len(self.raw) < self.RAW_LIMIT:
            self.raw += chunk[: self.RAW_LIMIT - len(self.raw)]
        for piece in _pieces(chunk):
            for event in self.parser.feed(piece):
                self.arrivals.setdefault(int(event.last_event_id), now)


def open_bulk_stream(
    http: httpx.Client, url: str, session: str, headers: dict[str, str] | None = None
) -> BulkStream:
    all_headers = {"Accept": "text/event-stream", "Cookie": f"{SESSION_COOKIE}={session}"}
    all_headers.update(headers or {})
    context = http.stream("GET", url, headers=all_headers)
    response = context.__enter__()
    return BulkStream(response, lambda: context.__exit__(None, None, None))


def figures(test: str, published: int, received: list[int], expected: list[int]) -> None:
    lost = len(set(expected) - set(received))
    duplicated = len(received) - len(set(received))
    print(
        f"\n[{test}] events published={published} received={len(received)} "
        f"lost={lost} duplicated={duplicated}"
    )


def warning_lines(log: str) -> list[str]:
    """The server's warnings, for the test's report."""
    return [line[:200] for line in log.splitlines() if " WARNING " in line]


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """One line of ``process``'s stdout, waiting at most ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no line from the process within {timeout} s"
    return process.stdout.readline()


# -- the tests --------------------------------------------------------------------------------


def test_unreachable_database_at_open_gives_retry_only_then_streams(faults: Faults) -> None:
    server, proxy = faults.server, faults.proxy
    job_id = faults.jobs[Jobs.UNREACHABLE]
    url = server.url(job_id)
    cookie = {"Cookie": f"{SESSION_COOKIE}={server.owner_session}"}
    # Three events already stored (written directly: one process start less), then one
    # published by the app at the end.
    _store_events(faults.db_name, job_id, ["started", "log", "log"], finished=False)
    published: list[dict[str, Any]] = [{"seq": 1}, {"seq": 2}, {"seq": 3}]
    offset = server.log_offset()
    access_offset = len(server.access_log())
    with client() as http:
        # A first stream: the server's stream database thread now holds a connection.
        warm = open_stream(http, url, server.owner_session)
        try:
            assert warm.response.status_code == 200
            warm.read_until(lambda: len(warm.parser.events) >= 3, 10, "3 events")
        finally:
            warm.close()
        assert warm.seqs == [1, 2, 3]
        assert wait_until(lambda: f"Stream closed: job={job_id} " in server.log(offset), 5)

        cut = proxy.cut()
        refused_before = proxy.refused
        try:
            assert cut >= 1, "the stream database thread held no connection to cut"
            # Twice: first on the connection that was cut, then on a connection attempt that
            # the "network" refuses.
            deferred = []
            for _attempt in range(2):
                response = http.get(url, headers=cookie)
                deferred.append(response)
                assert response.status_code == 200
                assert response.headers["content-type"] == CONTENT_TYPE
                assert response.headers["cache-control"] == "no-cache"
                assert response.content == RETRY_BODY
            assert proxy.refused > refused_before, "no connection attempt reached the proxy"
        finally:
            proxy.restore()

        # The browser comes back after the retry delay: the same request streams normally.
        again = open_stream(http, url, server.owner_session)
        try:
            assert again.response.status_code == 200
            assert again.response.headers["content-type"] == CONTENT_TYPE
            again.read_until(lambda: len(again.parser.events) >= 3, 10, "3 events")
            published += faults.commit(job_id, "--finish")
            again.read_to_end(timeout=10)
        finally:
            again.close()
    assert again.raw.startswith(RETRY_BODY)
    assert again.seqs == [1, 2, 3, 4]
    assert [e.type for e in again.parser.events] == ["started", "log", "log", "succeeded"]

    log = server.log(offset)
    deferrals = re.findall(
        rf"WARNING django_sse Stream of job {job_id} deferred: the database is unreachable", log
    )
    assert len(deferrals) == 2, log
    server.assert_clean(offset)
    access = server.access_log()[access_offset:]
    statuses = re.findall(rf'"GET /sse/jobs/{job_id}/events/[^"]*" (\d+)', access)
    # Daphne logs a response once it is complete: both deferred ones and the last stream (the
    # first one, left by the client, is not logged).
    assert statuses == ["200"] * 3, access
    print(
        f"\n[unreachable at open] proxy cut {cut} connection(s), refused {proxy.refused}; "
        f"bodies while cut: {[r.content for r in deferred]}"
    )
    print(*warning_lines(log), sep="\n")
    figures("unreachable at open", len(published), again.seqs, [1, 2, 3, 4])


def _store_events(db_name: str, job_id: str, types: list[str], *, finished: bool) -> None:
    """Events 1..len(types) of a job with these types, written straight to the database with
    COPY, and the job row to match (``last_seq``; succeeded when ``finished``, else running).
    Data: ``{"i": seq}``, or ``{"result": {"n": count}}`` for ``succeeded``."""
    job = uuid.UUID(job_id)
    count = len(types)
    now = datetime.datetime.now(datetime.timezone.utc)
    copy_sql = "COPY django_sse_jobevent (job_id, seq, type, data, created_at) FROM STDIN"
    with pg_connect(db_name) as conn:
        with conn.transaction():
            with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
                for seq, type_ in enumerate(types, 1):
                    data = {"result": {"n": count}} if type_ == "succeeded" else {"i": seq}
                    copy.write_row((job, seq, type_, json.dumps(data), now))
            conn.execute(
                "UPDATE django_sse_job SET last_seq = %s, status = %s, result = %s, "
                "finished_at = %s, updated_at = %s WHERE id = %s",
                [
                    count,
                    "succeeded" if finished else "running",
                    json.dumps({"n": count}) if finished else None,
                    now if finished else None,
                    now,
                    job,
                ],
            )
        (stored, low, high) = conn.execute(
            "SELECT count(*), min(seq), max(seq) FROM django_sse_jobevent WHERE job_id = %s",
            [job],
        ).fetchone()
    assert (stored, low, high) == (count, 1, count)


def test_database_lost_during_replay_then_resume(faults: Faults) -> None:
    server, proxy = faults.server, faults.proxy
    job_id = faults.jobs[Jobs.REPLAY]
    url = server.url(job_id)
    # Seq 1..N contiguous, the last one terminal, Job.last_seq = N.
    _store_events(faults.db_name, job_id, ["log"] * (HISTORY - 1) + ["succeeded"], finished=True)
    offset = server.log_offset()
    expected = list(range(1, HISTORY + 1))
    with client() as http:
        proxy.delay = REPLAY_DELAY
        try:
            first = open_bulk_stream(http, url, server.owner_session)
            try:
                assert first.response.status_code == 200
                first.read_until(
                    lambda: len(first.parser.events) >= CUT_AFTER, 30, f"{CUT_AFTER} events"
                )
                cut = proxy.cut()
                cut_at_count = len(first.parser.events)
                # The stream must end by itself, cleanly (httpx raises on a truncated body).
                first.read_to_end(timeout=15)
            finally:
                first.close()
        finally:
            proxy.restore()
        assert cut >= 1
        received_first = first.seqs
        assert received_first == list(range(1, len(received_first) + 1)), "gap or disorder"
        assert len(received_first) < HISTORY, "the replay was over before the cut"
        assert first.parser.events[-1].type == "log"
        assert wait_until(lambda: f"Stream closed: job={job_id} " in server.log(offset), 5), (
            server.log(offset)
        )
        last_id = first.parser.events[-1].last_event_id

        resumed_at = time.monotonic()
        second = open_bulk_stream(http, url, server.owner_session, {"Last-Event-ID": last_id})
        try:
            assert second.response.status_code == 200
            second.read_to_end(timeout=30)
        finally:
            second.close()
        resume_seconds = time.monotonic() - resumed_at

    received = received_first + second.seqs
    assert second.seqs[:1] == [int(last_id) + 1]
    assert len(received) == len(set(received)), "duplicates"
    assert sorted(received) == expected
    assert second.parser.events[-1].type == "succeeded"

    log = server.log(offset)
    assert re.search(
        rf"WARNING django_sse Stream of job {job_id} ends on a database error: "
        r"OperationalError",
        log,
    ), log
    assert re.search(
        rf"Stream closed: job={job_id} user=\S+ events={len(received_first)} .*"
        r"reason=database error \(OperationalError\)",
        log,
    ), log
    assert re.search(
        rf"Stream closed: job={job_id} user=\S+ events={len(second.seqs)} .*reason=job finished",
        log,
    ), log
    server.assert_clean(offset)
    print(
        f"\n[lost during replay] cut after {cut_at_count} events had arrived "
        f"({cut} proxied connection(s) reset); first connection got {len(received_first)}, "
        f"the resumed one {len(second.seqs)} in {resume_seconds:.2f} s"
    )
    print(*warning_lines(log), sep="\n")
    figures("lost during replay", HISTORY, received, expected)


def test_publisher_killed_mid_transaction_leaks_nothing(faults: Faults) -> None:
    server = faults.server
    job_id = faults.jobs[Jobs.KILLED]
    offset = server.log_offset()
    doomed = 5
    with client() as http:
        stream = open_stream(http, server.url(job_id), server.owner_session)
        try:
            assert stream.response.status_code == 200
            stream.read_first_chunk()
            # Commits started + 2 events, then writes 5 more in a transaction it never commits.
            dying = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.live",
                    "fault",
                    "die",
                    job_id,
                    "--start",
                    "--committed",
                    "2",
                    "--events",
                    str(doomed),
                ],
                cwd=ROOT,
                env=faults.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                ready = json.loads(_read_line(dying, timeout=30))
                assert ready["committed"] == [1, 2, 3]
                assert ready["seqs"] == [4, 5, 6, 7, 8]
                stream.read_until(lambda: len(stream.parser.events) >= 3, 10, "3 events")
                # It holds the job's row lock with 5 events written and not committed: several
                # polls and heartbeats go by, and the stream shows none of them.
                hold_until = time.monotonic() + 1.5
                stream.read_until(lambda: time.monotonic() >= hold_until, 10, "1.5 s")
                assert stream.seqs == [1, 2, 3]
                assert dying.poll() is None
                os.kill(dying.pid, signal.SIGKILL)
                dying.wait(10)
            finally:
                if dying.poll() is None:
                    dying.kill()
                    dying.wait(10)
                close_pipes(dying)
            assert dying.returncode == -signal.SIGKILL

            # PostgreSQL rolls the dead transaction back and releases the row lock; the next
            # publish takes the next number after the committed ones, and the stream gets it.
            after = faults.commit(job_id, "--events", "1", "--type", "after", "--finish")
            stream.read_to_end(timeout=10)
        finally:
            stream.close()
    assert [(a["seq"], a["type"]) for a in after] == [(4, "after"), (5, "succeeded")]
    assert stream.seqs == [1, 2, 3, 4, 5]
    types = [e.type for e in stream.parser.events]
    assert types == ["started", "log", "log", "after", "succeeded"]
    assert b"doomed" not in stream.raw
    rows, last_seq = faults.stored(job_id)
    assert rows == [(1, "started"), (2, "log"), (3, "log"), (4, "after"), (5, "succeeded")]
    assert last_seq == 5
    server.assert_clean(offset)
    print(
        f"\n[killed publisher] {doomed} events written in the killed transaction: "
        f"0 stored, 0 streamed"
    )
    published = len(ready["committed"]) + len(after)
    figures("killed publisher", published, stream.seqs, [1, 2, 3, 4, 5])

"""End-to-end tests against a real server in a subprocess, read with httpx: Daphne, uvicorn
(``uvicorn[standard]``: uvloop, httptools) and Granian, each started as
``tests.live.processes.server_command`` says, each with a database of its own.

Every test runs on Daphne and uvicorn. On Granian (a server django_sse does not know, see
``django_sse/servers.py``) the smoke tests run: delivery from another process, resume after a
reset, refusals, heartbeats, revocation; the thread and connection counts are Daphne's and
uvicorn's (Granian's worker runs threads of its own): ``on_daphne_and_uvicorn``.

The server, a setup process and publisher processes share one real database: a SQLite file in a
temporary directory, or a PostgreSQL database created for this run when ``DATABASE_URL`` is set
(dropped at the end). With ``REDIS_URL`` the server uses the Redis channel layer, with a prefix
shared by all processes; the database poll is then slowed to 30 s so that prompt delivery
proves the Redis path. Without it, events from another process arrive through the 0.2 s poll.

Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from django_sse.database import DEFAULT_DB_THREADS, DEFAULT_DB_THREADS_SQLITE
from tests.live.e2e_support import Server
from tests.live.processes import (
    SERVER_KINDS,
    child_env,
    close_pipes,
    create_database,
    delete_redis_keys,
    drop_database,
    free_port,
    pg_connect,
    run_id,
    run_module,
    start_publisher,
    start_server,
    stop_process,
    wait_listening,
    wait_until,
)
from tests.live.streams import CONTENT_TYPE, SESSION_COOKIE, Stream, client, open_stream

pytestmark = pytest.mark.e2e

DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
USE_POSTGRES = DATABASE_URL.startswith("postgres")
# The server's stream database threads (its DB_THREADS default): up to that many threads and
# connections however many streams are open; the bounds below allow for them beyond the first.
SERVER_DB_THREADS = DEFAULT_DB_THREADS if USE_POSTGRES else DEFAULT_DB_THREADS_SQLITE
MORE_DB_THREADS = SERVER_DB_THREADS - 1
# With Redis the poll is slowed down so that only the layer can deliver within the deadline.
POLL_SECONDS = 30.0 if REDIS_URL else 0.2
MAX_LATENCY = 1.5 if REDIS_URL else 3.0
# Short, so that heartbeats and the session re-check they carry can be seen in a test.
HEARTBEAT_SECONDS = 2.0
# Longer than redis-py 8's default socket timeout (5 s), which must not cut an idle receive.
IDLE_SECONDS = 6.0
IDLE_STREAMS = 30
CLEANUP_STREAMS = 5


class Jobs:
    """Indexes of the jobs made by the setup process; each test has its own."""

    PUBLISHED = 0
    RESUMED = 1
    IDLE_THEN_PUBLISHED = 2
    REVOKED = 3
    REFUSALS = 4
    IDLE = slice(5, 5 + IDLE_STREAMS)
    CLEANUP = slice(5 + IDLE_STREAMS, 5 + IDLE_STREAMS + CLEANUP_STREAMS)
    COUNT = 5 + IDLE_STREAMS + CLEANUP_STREAMS


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def settled_thread_count(pid: int, at_most: int, timeout: float) -> int:
    """The thread count once it is ``at_most`` or less, or after ``timeout`` (threads of
    released executors exit a moment after the stream lets them go)."""
    wait_until(lambda: thread_count(pid) <= at_most, timeout)
    return thread_count(pid)


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")


def fds_to(pid: int, path: str) -> int:
    """Open file descriptors of ``pid`` on the file ``path`` (a SQLite connection holds one)."""
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                count += 1
        except OSError:
            pass  # closed meanwhile
    return count


# -- the shared database ----------------------------------------------------------------------


def pg_connections(dbname: str) -> int:
    """Connections to ``dbname`` (the test process never connects to it)."""
    with pg_connect(DATABASE_URL) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [dbname],
        ).fetchone()
    return int(row[0])


@dataclass
class E2E:
    env: dict[str, str]
    db_name: str  # the SQLite file, or the PostgreSQL database name
    owner_session: str
    owner_session_to_revoke: str
    other_session: str
    jobs: list[str]

    def db_connections(self, pid: int) -> int:
        if USE_POSTGRES:
            return pg_connections(self.db_name)
        return fds_to(pid, self.db_name)


def server_params(kinds: tuple[str, ...]) -> list[Any]:
    """``kinds`` as parameters: Daphne's runs in every cell of the matrix, the others are
    marked ``servers`` (once in nox, see ONLY_IN in noxfile.py)."""
    return [pytest.param(k, marks=() if k == "daphne" else pytest.mark.servers) for k in kinds]


@pytest.fixture(scope="module", params=server_params(SERVER_KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    """The server of the module's run (a test may narrow it with ``on_servers``)."""
    return str(request.param)


# The tests that do not run on Granian (the thread and connection counts).
on_daphne_and_uvicorn = pytest.mark.parametrize(
    "kind", server_params(("daphne", "uvicorn")), indirect=True
)


@pytest.fixture(scope="module")
def e2e(kind: str) -> Iterator[E2E]:
    """A database of the ``kind`` run's own (its tests use up their jobs)."""
    rid = run_id()
    tmp = tempfile.mkdtemp(prefix="django_sse_e2e_")
    if USE_POSTGRES:
        db_name = f"django_sse_e2e_{rid}"
        create_database(DATABASE_URL, db_name)
    else:
        db_name = os.path.join(tmp, "e2e.sqlite3")
    env = child_env(
        DJANGO_SETTINGS_MODULE="tests.live.e2e_settings",
        DJANGO_SSE_E2E_DB=db_name,
        DJANGO_SSE_E2E_PREFIX=f"django_sse_e2e_{rid}",
        DJANGO_SSE_E2E_POLL_SECONDS=str(POLL_SECONDS),
        DJANGO_SSE_E2E_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
    )
    try:
        made = json.loads(run_module(env, "tests.live", "e2e", "setup", "--jobs", str(Jobs.COUNT)))
        yield E2E(
            env,
            db_name,
            made["owner_session"],
            made["owner_session_to_revoke"],
            made["other_session"],
            made["jobs"],
        )
    finally:
        if USE_POSTGRES:
            drop_database(DATABASE_URL, db_name)
        if REDIS_URL:
            with contextlib.suppress(Exception):
                delete_redis_keys(REDIS_URL, f"{env['DJANGO_SSE_E2E_PREFIX']}*")
        shutil.rmtree(tmp, ignore_errors=True)


# -- the server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(kind: str, e2e: E2E) -> Iterator[Server]:
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="django_sse_e2e_log_"))
    log_path = log_dir / f"{kind}.log"
    with open(log_path, "wb") as log, open(log_dir / "access.log", "wb") as access:
        process = start_server(kind, port, e2e.env, stdout=access, stderr=log)
    try:
        wait_listening(process, port, log_path.read_text, name=kind)
        server = Server(process, port, log_path, e2e.owner_session, e2e.other_session)
        server.unknown = kind == "granian"
        yield server
    finally:
        stop_process(process)
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture
def spawn(e2e: E2E) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start publisher processes; any still running at teardown is stopped."""
    started: list[subprocess.Popen[str]] = []

    def start(job_id: str, steps: int, interval: float) -> subprocess.Popen[str]:
        process = start_publisher(e2e.env, job_id, steps, interval)
        started.append(process)
        return process

    yield start
    for process in started:
        stop_process(process)
        close_pipes(process)


def published_times(process: subprocess.Popen[str], timeout: float = 20) -> dict[int, float]:
    """Wait for a publisher to finish; ``{seq: time it was committed}``."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"publisher failed:\n{out}\n{err}"
    times = {}
    for line in out.splitlines():
        record = json.loads(line)
        times[record["seq"]] = record["t"]
    return times


# -- reading a stream -------------------------------------------------------------------------


def request_head(
    http: httpx.Client, method: str, url: str, headers: dict[str, str]
) -> httpx.Response:
    """Status and headers of a request; an event stream's endless body is not read."""
    with http.stream(method, url, headers=headers) as response:
        stream = response.headers.get("content-type", "").startswith("text/event-stream")
        if method == "HEAD" or not stream:
            response.read()
    return response


# -- the tests --------------------------------------------------------------------------------


def test_job_published_from_another_process_streams_in_order(
    server: Server, e2e: E2E, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    offset = server.log_offset()
    job_id = e2e.jobs[Jobs.PUBLISHED]
    steps = 8
    with client() as http:
        stream = open_stream(http, server.url(job_id), server.owner_session)
        # The same job in a second tab: read after the first, from what the socket buffered.
        second_tab = open_stream(http, server.url(job_id), server.owner_session)
        try:
            response = stream.response
            assert response.status_code == 200
            assert response.headers["content-type"] == CONTENT_TYPE
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers.get("content-encoding", "identity") == "identity"
            stream.read_first_chunk()
            # Plain text on the wire although the client accepts gzip.
            assert stream.raw.startswith(b"retry: ")
            assert stream.parser.events == []
            assert second_tab.response.status_code == 200
            second_tab.read_first_chunk()

            publisher = spawn(job_id, steps=steps, interval=0.1)
            stream.read_to_end(timeout=30)
            second_tab.read_to_end(timeout=10)
        finally:
            stream.close()
            second_tab.close()
    published = published_times(publisher)
    # Heartbeats may differ between the two; the events may not.
    assert second_tab.parser.events == stream.parser.events

    total = steps + 2
    assert sorted(published) == list(range(1, total + 1))
    assert stream.seqs == list(range(1, total + 1))
    types = [e.type for e in stream.parser.events]
    assert types == ["started"] + ["step"] * steps + ["succeeded"]
    datas = [json.loads(e.data) for e in stream.parser.events]
    assert [d["i"] for d in datas[1:-1]] == list(range(steps))
    assert datas[-1]["result"]["steps"] == steps
    # Nothing after the terminal event: the body ends right after it.
    assert stream.raw.endswith(b"\n\n")
    assert stream.raw.split(b"\n\n")[-2].startswith(b"id: %d\nevent: succeeded\n" % total)
    latencies = {seq: stream.arrivals[seq] - published[seq] for seq in published}
    late = {seq: round(lag, 3) for seq, lag in latencies.items() if lag > MAX_LATENCY}
    assert not late, f"events later than {MAX_LATENCY} s: {late}"
    print(f"latency max {max(latencies.values()):.3f} s over {total} events")
    assert wait_until(lambda: "reason=job finished" in server.log(offset), timeout=3)
    server.assert_no_errors(offset)


def test_resume_after_abrupt_disconnect(
    server: Server, e2e: E2E, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    offset = server.log_offset()
    job_id = e2e.jobs[Jobs.RESUMED]
    steps = 20
    total = steps + 2
    with client() as http:
        first = open_stream(http, server.url(job_id), server.owner_session)
        try:
            assert first.response.status_code == 200
            first.read_first_chunk()
            publisher = spawn(job_id, steps=steps, interval=0.1)
            first.read_until(lambda: len(first.parser.events) >= 5, 20, "5 events")
        except BaseException:
            first.close()
            raise
        assert first.abort(), "could not reset the connection"
        cut_at = time.time()
        assert first.seqs == list(range(1, len(first.seqs) + 1))
        last_id = first.parser.events[-1].last_event_id
        assert int(last_id) < total - 3
        # The publisher keeps going while nobody listens.
        time.sleep(0.5)
        resumed_at = time.time()
        second = open_stream(
            http, server.url(job_id), server.owner_session, {"Last-Event-ID": last_id}
        )
        try:
            assert second.response.status_code == 200
            second.read_to_end(timeout=30)
        finally:
            second.close()
        published = published_times(publisher)

        assert any(cut_at < t < resumed_at for t in published.values()), (
            "no event was published while disconnected"
        )
        assert second.seqs[0] == int(last_id) + 1
        both = first.seqs + second.seqs
        assert len(both) == len(set(both)), f"duplicates: {first.seqs} + {second.seqs}"
        assert sorted(both) == list(range(1, total + 1))
        assert second.parser.events[-1].type == "succeeded"

        # The finished job, resumed from its last event: "stop reconnecting".
        done = http.get(
            server.url(job_id),
            headers={
                "Cookie": f"{SESSION_COOKIE}={server.owner_session}",
                "Last-Event-ID": str(total),
            },
        )
        assert done.status_code == 204
        assert done.content == b""
        # Resumed a little earlier: the rest is replayed and the body ends.
        tail = open_stream(
            http, server.url(job_id), server.owner_session, {"Last-Event-ID": str(total - 2)}
        )
        try:
            assert tail.response.status_code == 200
            tail.read_to_end(timeout=10)
        finally:
            tail.close()
        assert tail.seqs == [total - 1, total]

    log = server.log(offset)
    assert re.search(rf"Stream closed: job={job_id} .*reason=client went away", log), log
    server.assert_no_errors(offset)


@on_daphne_and_uvicorn
@needs_proc
def test_idle_streams_hold_no_thread_and_no_connection(server: Server, e2e: E2E) -> None:
    offset = server.log_offset()
    jobs = e2e.jobs[Jobs.IDLE]
    # The server is idle: let any thread of an earlier request finish.
    time.sleep(0.5)
    baseline = thread_count(server.pid)
    db_baseline = e2e.db_connections(server.pid)
    streams: list[Stream] = []
    counts: dict[int, tuple[int, int]] = {}
    with client() as http:
        try:
            for batch in (jobs[:10], jobs[10:]):
                for job_id in batch:
                    stream = open_stream(http, server.url(job_id), server.owner_session)
                    streams.append(stream)
                    assert stream.response.status_code == 200
                for stream in streams:
                    stream.read_first_chunk()
                threads = settled_thread_count(
                    server.pid, baseline + 5 + MORE_DB_THREADS, timeout=3
                )
                counts[len(streams)] = (threads, e2e.db_connections(server.pid))
            print(f"threads: baseline {baseline}, 10/30 streams {counts[10][0]}/{counts[30][0]}")
            print(
                f"db connections: baseline {db_baseline}, 10/30 streams",
                counts[10][1],
                counts[30][1],
            )
            assert all(not s.ended for s in streams)
            assert counts[30][0] - baseline <= 5 + MORE_DB_THREADS, (baseline, counts)
            assert counts[30][0] - counts[10][0] <= 3, (baseline, counts)
            assert counts[10][1] <= 2 + MORE_DB_THREADS, counts
            assert counts[30][1] <= 2 + MORE_DB_THREADS, counts
            assert counts[30][1] <= counts[10][1] + 1, counts
        finally:
            for stream in streams:
                stream.close()

    def all_closed() -> bool:
        log = server.log(offset)
        return all(f"Stream closed: job={job_id} " in log for job_id in jobs)

    assert wait_until(all_closed, timeout=5), server.log(offset)
    after = settled_thread_count(server.pid, baseline + 2 + MORE_DB_THREADS, timeout=5)
    print(f"threads after closing: {after}")
    assert after <= baseline + 2 + MORE_DB_THREADS, (baseline, after)
    assert e2e.db_connections(server.pid) <= 2 + MORE_DB_THREADS
    server.assert_no_errors(offset)


@on_daphne_and_uvicorn
@needs_proc
def test_server_cleans_up_promptly_after_disconnect(server: Server, e2e: E2E) -> None:
    jobs = e2e.jobs[Jobs.CLEANUP]
    offset = server.log_offset()
    time.sleep(0.3)
    baseline = thread_count(server.pid)
    with client() as http:
        streams = [open_stream(http, server.url(job_id), server.owner_session) for job_id in jobs]
        try:
            for stream in streams:
                assert stream.response.status_code == 200
                stream.read_first_chunk()
            opened = server.log(offset)
            for job_id in jobs:
                assert f"Stream opened: job={job_id} " in opened
                assert f"Stream closed: job={job_id} " not in opened
        finally:
            # Half end with a reset, half with an orderly close.
            resets = 0
            for index, stream in enumerate(streams):
                if index % 2:
                    resets += stream.abort()
                else:
                    stream.close()
        left_at = time.monotonic()
        assert resets == len(streams) // 2

        def closed() -> list[str]:
            log = server.log(offset)
            return [job_id for job_id in jobs if f"Stream closed: job={job_id} " in log]

        found = wait_until(lambda: len(closed()) == len(jobs) and closed(), timeout=2)
        elapsed = time.monotonic() - left_at
    assert found, f"not closed within 2 s:\n{server.log(offset)}"
    print(f"all {len(jobs)} streams closed {elapsed:.2f} s after the clients left")
    log = server.log(offset)
    for job_id in jobs:
        line = re.search(rf"Stream closed: job={job_id} user=\S+ events=(\d+) .*reason=(.*)", log)
        assert line is not None
        assert line.group(1) == "0"
        assert line.group(2) == "client went away"
    after = settled_thread_count(server.pid, baseline + 2 + MORE_DB_THREADS, timeout=3)
    assert after <= baseline + 2 + MORE_DB_THREADS, (baseline, after)
    server.assert_no_errors(offset)


def test_refusals(server: Server, e2e: E2E) -> None:
    offset = server.log_offset()
    job_id = e2e.jobs[Jobs.REFUSALS]
    owner = {"Cookie": f"{SESSION_COOKIE}={server.owner_session}"}
    other = {"Cookie": f"{SESSION_COOKIE}={server.other_session}"}
    with client() as http:
        # The job exists and its owner may read it.
        allowed = open_stream(http, server.url(job_id), server.owner_session)
        try:
            assert allowed.response.status_code == 200
            allowed.read_first_chunk()
        finally:
            allowed.close()

        for headers in (other, {}):
            refused = request_head(http, "GET", server.url(job_id), headers)
            assert refused.status_code == 404
            assert not refused.headers.get("content-type", "").startswith("text/event-stream")
        for bad in ("not-a-uuid", "123", str(uuid.uuid4())):
            assert request_head(http, "GET", server.url(bad), owner).status_code == 404

        head = request_head(http, "HEAD", server.url(job_id), owner)
        assert head.status_code == 200
        assert head.headers["content-type"] == CONTENT_TYPE
        assert head.content == b""

        # GET and HEAD only (no CSRF token: the view is exempt, there is nothing to protect).
        for method in ("POST", "PUT", "DELETE"):
            refused = request_head(http, method, server.url(job_id), owner)
            assert refused.status_code == 405
            assert set(refused.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    log = server.log(offset)
    assert "Stream refused" in log
    server.assert_no_errors(offset)


def test_idle_stream_gets_heartbeats_then_events(
    server: Server, e2e: E2E, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """Idle longer than redis-py's default socket timeout, then events still arrive promptly."""
    offset = server.log_offset()
    job_id = e2e.jobs[Jobs.IDLE_THEN_PUBLISHED]
    with client() as http:
        stream = open_stream(http, server.url(job_id), server.owner_session)
        try:
            assert stream.response.status_code == 200
            stream.read_first_chunk()
            idle_until = time.monotonic() + IDLE_SECONDS
            stream.read_until(lambda: time.monotonic() >= idle_until, IDLE_SECONDS + 5, "idle time")
            assert stream.parser.events == []
            # One ": ping" every HEARTBEAT_SECONDS, with no id.
            assert stream.parser.comments.count("ping") >= int(IDLE_SECONDS / HEARTBEAT_SECONDS) - 1
            assert stream.parser.last_event_id == ""
            publisher = spawn(job_id, steps=3, interval=0.05)
            stream.read_to_end(timeout=20)
        finally:
            stream.close()
    published = published_times(publisher)
    assert stream.seqs == [1, 2, 3, 4, 5]
    lags = {seq: round(stream.arrivals[seq] - t, 3) for seq, t in published.items()}
    assert max(lags.values()) <= MAX_LATENCY, lags
    server.assert_no_errors(offset)


def test_stream_ends_when_the_session_is_revoked(server: Server, e2e: E2E) -> None:
    offset = server.log_offset()
    job_id = e2e.jobs[Jobs.REVOKED]
    session = e2e.owner_session_to_revoke
    with client() as http:
        stream = open_stream(http, server.url(job_id), session)
        try:
            assert stream.response.status_code == 200
            stream.read_first_chunk()
            run_module(e2e.env, "tests.live", "e2e", "logout", session)
            logged_out = time.monotonic()
            stream.read_to_end(timeout=2 * HEARTBEAT_SECONDS + 5)
            ended_after = time.monotonic() - logged_out
        finally:
            stream.close()
        assert ended_after <= 2 * HEARTBEAT_SECONDS + 1
        assert stream.parser.events == []
        # The browser reconnects: the dead session owns nothing.
        cookie = {"Cookie": f"{SESSION_COOKIE}={session}"}
        assert request_head(http, "GET", server.url(job_id), cookie).status_code == 404
    log = server.log(offset)
    assert re.search(rf"Stream closed: job={job_id} .*reason=access revoked", log), log
    server.assert_no_errors(offset)

"""The abuse suite: live Daphne, uvicorn and Granian servers stay calm under abuse.

Each test runs against each server (subprocesses, see ``tests/live/abuse_support.py``) and asserts
bounds: memory against the same server before the abuse, query counts and latencies against a
measurement made in the same test, never absolute speed. The scenarios are scaled down from
the ones measured on the baseline (50,000-event jobs, 20 or 1,500 sockets) to what still proves
the point within seconds: a small ``MAX_BUFFERED_BYTES`` (256 KiB), ``HEARTBEAT_SECONDS`` of
2 s where the re-authorization deadline is the subject (1 s for the resume-point tests, 60 s
elsewhere, so that no deadline cuts a memory measurement short), ``SEND_TIMEOUT_SECONDS`` of 2 s
where the timeout is the subject (60 s elsewhere).

A never-reading client is a raw socket with a small receive buffer that sends its request and
never calls ``recv()``; a slow one reads at a set average rate, emptying its receive buffer at
each read (so the kernel keeps acknowledging: a client that stops for longer than a heartbeat
may rightly be dropped by a ``TCP_USER_TIMEOUT``). Events published during a test
carry their publish time in their data (``{"t": ...}``), so that what a client received after a
logout can be checked against the time of the logout.

Granian is a server django_sse does not know (``django_sse/servers.py``): a stream there ends
after ``MAX_BUFFERED_BYTES`` and the browser resumes, so the tests whose subject is a stream
waiting on a client that does not read (memory, send timeout, a logout while stalled, the one
warning of a crafted resume point, which Granian's one "no back-pressure" warning joins) run on
the servers with back-pressure only (``BACKPRESSURE_KINDS``); ``tests/test_granian.py`` holds
Granian's own bounds. The others run on all three.

Every wait is bounded and waits for a state; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import secrets
import statistics
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django_sse.resume import base36
from tests.live.abuse_support import (
    CSRF_COOKIE,
    KIB,
    MIB,
    SESSION_COOKIE,
    LiveServer,
    RawStream,
    Reporter,
    Shared,
    event_data,
    published_at,
    raw_streams,
    reporters,
    serve,
    shared_database,
    wait_rss_settled,
)
from tests.live.processes import SERVER_KINDS, wait_until

# The servers whose back-pressure django_sse reads (django_sse.servers): the tests of a stream
# waiting on its client run on these only.
BACKPRESSURE_KINDS = ("daphne", "uvicorn")
on_backpressure_servers = pytest.mark.parametrize("kind", BACKPRESSURE_KINDS)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.abuse,
    pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc"),
]

MAX_BUFFERED_BYTES = 256 * KIB
POLL_SECONDS = 0.2
# Short, so that a re-authorization deadline falls within a test. (The app may also make it the
# kernel's TCP_USER_TIMEOUT: a client that does not acknowledge for this long is dropped, which
# is why the stalled clients below keep reading a little.)
HEARTBEAT_SECONDS = 2.0
# Added to logout + HEARTBEAT_SECONDS: clocks of two processes, a re-check queued behind a
# page read on a busy machine.
LOGOUT_ALLOWANCE_SECONDS = 1.0
# How long after logout + HEARTBEAT_SECONDS the stream may take to end ("about" a heartbeat).
CLOSE_SLACK_SECONDS = 2.0
# A small receive buffer: the TCP window the server sees stays small too.
NEVER_READ_RCVBUF = 4 * KIB
# A slow reader's: big enough that each read reopens a useful window (with a tiny one, the
# kernel may count a trickle of reads as an unanswered zero-window probe and drop it).
SLOW_RCVBUF = 64 * KIB

# Every server of the suite; tests add what they are about.
# (A heartbeat of 60 s: a never-reading socket is not dropped by a deadline during a test.)
BASE_SETTINGS: dict[str, Any] = {
    "MAX_BUFFERED_BYTES": MAX_BUFFERED_BYTES,
    "SEND_TIMEOUT_SECONDS": 60.0,
    "HEARTBEAT_SECONDS": 60.0,
    "POLL_SECONDS": POLL_SECONDS,
}


def settings(**values: Any) -> dict[str, Any]:
    return {**BASE_SETTINGS, **values}


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    with shared_database() as value:
        yield value


@pytest.fixture(params=SERVER_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def name() -> Callable[[str], str]:
    """Names unique to this test (user names, anonymous session labels)."""
    token = secrets.token_hex(4)
    return lambda label: f"{label}-{token}"


def job_url(job_id: str, query: str = "") -> str:
    return f"/sse/jobs/{job_id}/events/" + (f"?{query}" if query else "")


SESSION_URL = "/sse/events/"


def seqs(stream: RawStream) -> list[int]:
    return [int(e.last_event_id) for e in stream.events if e.last_event_id.isdigit()]


def late_events(stream: RawStream, limit: float) -> list[float]:
    """Publish times later than ``limit`` among the events ``stream`` received."""
    times = (published_at(event) for event in stream.events)
    return sorted(t for t in times if t is not None and t > limit)


def read_to_first_ping(stream: RawStream, timeout: float) -> bool:
    """Read until the stream's first heartbeat (``: ping``); whether it came."""
    return stream.read_until(lambda: "ping" in stream.parser.comments, timeout)


def count_events(shared: Shared, job_id: str, type_: str) -> int:
    return int(shared.tool("count", job_id, type_))


# -- memory: never-reading and stalled clients ------------------------------------------------


@on_backpressure_servers
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("events", "size", "sockets"),
    [(20_000, 1_000, 8), (300, 60_000, 4)],
    ids=["1KB-events", "60KB-events"],
)
def test_never_reading_replays_hold_bounded_memory(
    shared: Shared, kind: str, name: Callable[[str], str], events: int, size: int, sockets: int
) -> None:
    """Sockets that ask for a long history and never read cost the server at most about
    ``MAX_BUFFERED_BYTES`` each (pages sized in bytes, the server's buffer bounded by
    back-pressure), not the history."""
    owner = name("owner")
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": events, "size": size}]}
    with serve(shared, kind, spec, settings()) as (server, made), raw_streams() as streams:
        job_id, session = made.jobs[0], made.sessions[owner]
        url = job_url(job_id, "last_event_id=0")
        # A normal reader first (a few MB of the replay): the server's code and caches are
        # warm, its RSS a fair base.
        warm = RawStream.open(server.port, url, session=session, parse=False)
        streams.append(warm)
        enough = min(events * size, 4 * MIB)
        assert warm.read_until(lambda: warm.received >= enough, 60), warm.received
        warm.close()
        base = wait_rss_settled(server, timeout=10)
        offset = server.log_offset()
        for _ in range(sockets):
            streams.append(
                RawStream.open(server.port, url, session=session, rcvbuf=NEVER_READ_RCVBUF)
            )
        opened = wait_until(
            lambda: server.log(offset).count(f"Stream opened: job={job_id} ") >= sockets, 10
        )
        assert opened, server.log(offset)
        peak = wait_rss_settled(server, timeout=30)
        growth = peak - base
        per_socket = growth / sockets
        allowed = sockets * (4 * MAX_BUFFERED_BYTES + 2 * size) + 4 * MIB
        print(
            f"{kind}: {sockets} never-reading sockets on {events} x {size} B: RSS "
            f"{base / MIB:.1f} -> {peak / MIB:.1f} MiB, {per_socket / MIB:.2f} MiB per socket "
            f"(allowed {allowed / MIB:.1f} MiB in all)"
        )
        # The server still serves others meanwhile.
        other = RawStream.open(server.port, job_url(job_id), session=session)
        streams.append(other)
        other.read_retry(timeout=10)
        assert growth <= allowed, (
            f"{per_socket / MIB:.1f} MiB per never-reading socket; {allowed / MIB:.1f} MiB "
            f"allowed for {sockets}"
        )
        server.assert_no_errors()


@on_backpressure_servers
@pytest.mark.timeout(120)
def test_stalled_live_client_memory_is_bounded(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    """A caught-up client stops reading while its job publishes as fast as it can (about
    3 MB/s): the server's memory stops growing at about ``MAX_BUFFERED_BYTES`` (bounded inbox,
    back-pressure), far below what was published."""
    owner = name("owner")
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": 3, "size": 100}]}
    size = 60_000

    def publish(count: int) -> list[dict[str, Any]]:
        args = ("--count", str(count), "--interval", "0.01", "--size", str(size))
        return start("publish", job_id, *args).wait(timeout=60)

    with (
        serve(shared, kind, spec, settings()) as (server, made),
        raw_streams() as streams,
        reporters(shared) as start,
    ):
        job_id, session = made.jobs[0], made.sessions[owner]
        # The same traffic to a client that reads first: the server's caches (the database's
        # pages, the allocator's arenas) grow to their size for it, which is no abuse.
        reader = RawStream.open(server.port, job_url(job_id), session=session, parse=False)
        streams.append(reader)
        reader.read_retry()
        warm_up = publish(50)
        assert reader.read_until(lambda: reader.received >= len(warm_up) * size, 30)
        reader.close()
        last_seq = warm_up[-1]["seq"]
        stalled = RawStream.open(
            server.port,
            job_url(job_id),
            session=session,
            headers={"Last-Event-ID": str(last_seq)},
            rcvbuf=NEVER_READ_RCVBUF,
        )
        streams.append(stalled)
        stalled.read_retry()
        base = wait_rss_settled(server, timeout=10)
        published = publish(300)
        peak = wait_rss_settled(server, timeout=10)
        growth = peak - base
        sent = len(published) * size
        allowed = 4 * MAX_BUFFERED_BYTES + 2 * MIB
        print(
            f"{kind}: stalled client, {len(published)} x {size} B published "
            f"({sent / MIB:.1f} MiB): RSS {base / MIB:.1f} -> {peak / MIB:.1f} MiB "
            f"(+{growth / MIB:.1f} MiB, allowed {allowed / MIB:.1f})"
        )
        assert growth <= allowed, f"+{growth / MIB:.1f} MiB for one stalled client"
        server.assert_no_errors()


@on_backpressure_servers
@pytest.mark.timeout(120)
def test_stalled_client_is_cut_after_send_timeout_and_resumes_without_loss(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    """A chunk the server cannot take within ``SEND_TIMEOUT_SECONDS`` ends the stream
    (``reason=send timed out``); the client resumes from its last id and loses nothing."""
    owner = name("owner")
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": 3, "size": 100}]}
    timeout = 2.0
    count, size, interval = 300, 40_000, 0.01
    with (
        serve(shared, kind, spec, settings(SEND_TIMEOUT_SECONDS=timeout)) as (server, made),
        raw_streams() as streams,
        reporters(shared) as start,
    ):
        job_id, session = made.jobs[0], made.sessions[owner]
        offset = server.log_offset()
        first = RawStream.open(
            server.port, job_url(job_id), session=session, rcvbuf=NEVER_READ_RCVBUF
        )
        streams.append(first)
        assert first.read_until(lambda: len(first.events) >= 3, 10)
        started = time.monotonic()
        publisher = start(
            "publish", job_id, "--count", str(count), "--interval", str(interval),
            "--size", str(size), "--finish",
        )  # fmt: skip
        cut = server.wait_log(
            rf"Stream closed: job={job_id} .*reason=send timed out", offset, timeout=25
        )
        cut_after = time.monotonic() - started
        print(f"{kind}: stream cut {cut_after:.1f} s after publishing began: {bool(cut)}")
        assert cut, f"no 'send timed out' within 25 s:\n{server.log(offset)[-3000:]}"
        # What the kernel still held is read, then the connection is over.
        assert first.read_to_end(timeout=20), "the cut connection did not end"
        # The id of the last complete event (a cut may leave half of one, never dispatched).
        assert first.events, "nothing received before the cut"
        last_id = first.events[-1].last_event_id
        publisher.wait(timeout=60)
        total = count + 3 + 1
        second = RawStream.open(
            server.port, job_url(job_id), session=session, headers={"Last-Event-ID": last_id}
        )
        streams.append(second)
        assert second.read_to_end(timeout=30), f"resumed stream did not end: {seqs(second)[-3:]}"
        both = seqs(first) + seqs(second)
        print(f"{kind}: first connection {len(seqs(first))} events, resumed {len(seqs(second))}")
        assert seqs(first) == list(range(1, int(last_id) + 1))
        assert both == list(range(1, total + 1)), "events lost or repeated across the resume"
        server.assert_no_errors(offset)


# -- resume points ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_too_old_resume_point_is_a_first_connection(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    """``Last-Event-ID: 0`` (or any time older than ``RESUME_MAX_AGE_SECONDS``) on the stream of
    all of a session's jobs replays only the running jobs, not every job the visitor ever had."""
    owner = name("owner")
    finished = {"owner": owner, "events": 5, "size": 100, "status": "succeeded"}
    running = {"owner": owner, "events": 5, "size": 100, "status": "running"}
    spec = {"users": [owner], "jobs": [running, finished, finished, finished]}
    max_age = 3600.0
    two_hours_ago = base36(int(time.time() - 2 * max_age))
    config = settings(HEARTBEAT_SECONDS=1.0, RESUME_MAX_AGE_SECONDS=max_age)
    with (
        serve(shared, kind, spec, config) as (server, made),
        raw_streams() as streams,
    ):
        running_id = made.jobs[0]
        for resume in ("0", two_hours_ago):
            stream = RawStream.open(
                server.port,
                SESSION_URL,
                session=made.sessions[owner],
                headers={"Last-Event-ID": resume},
            )
            streams.append(stream)
            assert stream.read_head() == 200
            # The replay comes first, then a heartbeat.
            read_to_first_ping(stream, timeout=10)
            replayed = sorted({str(event_data(e).get("job")) for e in stream.events})
            print(f"{kind}: Last-Event-ID {resume!r} replayed {len(replayed)} job(s)")
            assert replayed == [running_id], f"{resume!r} replayed {replayed}"
            assert len(stream.events) == 5
            stream.close()
        server.assert_no_errors()


@on_backpressure_servers
@pytest.mark.timeout(90)
def test_crafted_resume_points_are_ignored_with_one_warning(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    """Crafted ``Last-Event-ID`` values on the stream of all of a session's jobs: 200, the
    stream goes on, exactly one WARNING per request and no traceback."""
    owner = name("owner")
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": 5, "size": 100}]}
    with (
        serve(shared, kind, spec, settings(HEARTBEAT_SECONDS=1.0)) as (server, made),
        raw_streams() as streams,
    ):
        ref = uuid.UUID(made.jobs[0]).hex[:8]
        crafted = [
            "zzzzzzzzzzzzz",
            f"0.{ref}zzzzzzzzzzzzz",
            base36(int(time.time()) + 10 * 365 * 86400),
        ]
        failures = []
        for value in crafted:
            offset = server.log_offset()
            stream = RawStream.open(
                server.port,
                SESSION_URL,
                session=made.sessions[owner],
                headers={"Last-Event-ID": value},
            )
            streams.append(stream)
            status = stream.read_head()
            read_to_first_ping(stream, timeout=10)
            alive = not stream.ended and "ping" in stream.parser.comments
            log = server.log(offset)
            warnings = len(re.findall(r" WARNING django_sse\b", log))
            traceback = bool(re.search(r"Traceback|\bERROR\b|Exception", log))
            print(
                f"{kind}: Last-Event-ID {value!r}: status {status}, stream alive {alive}, "
                f"{warnings} warning(s), traceback {traceback}"
            )
            if status != 200 or not alive or warnings != 1 or traceback:
                failures.append((value, status, alive, warnings, traceback, log[-2000:]))
            stream.close()
        assert not failures, failures
        server.assert_alive()


# -- logout: no event published after it (plus a heartbeat) reaches the client ------------------


class LogWatch:
    """A predicate: whether a line matching ``pattern`` is in the log after ``offset``. Notes
    when the server wrote it (the line's own time stamp, in local time like the server's)."""

    def __init__(self, server: LiveServer, pattern: str, offset: int) -> None:
        self.server = server
        self.regex = re.compile(rf"^(\S+ \S+) .*{pattern}", re.M)
        self.offset = offset
        self.seen_at: float | None = None

    def __call__(self) -> bool:
        if self.seen_at is None:
            found = self.regex.search(self.server.log(self.offset))
            if found is not None:
                stamp, _, millis = found.group(1).partition(",")
                try:
                    moment = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
                    self.seen_at = moment + int(millis or 0) / 1000
                except ValueError:
                    self.seen_at = time.time()
        return self.seen_at is not None


def logout_while_reading(
    stream: RawStream, start: Callable[..., Reporter], session: str, rate: float
) -> float:
    """Delete the session from another process while ``stream`` goes on reading at ``rate``
    (a client that pauses longer than a heartbeat may be dropped by the kernel); the time of
    the delete."""
    done = start("logout", session)
    assert stream.read_slowly(rate, done.times, timeout=30), "the logout did not finish"
    return done.times()[0]


def report_logout(kind: str, stream: RawStream, closed: LogWatch, logged_out: float) -> list[float]:
    """Print what the client got after the logout; the publish times that came too late."""
    closed()  # (a close seen only now still counts, late)
    late = late_events(stream, logged_out + HEARTBEAT_SECONDS + LOGOUT_ALLOWANCE_SECONDS)
    closed_after = None if closed.seen_at is None else round(closed.seen_at - logged_out, 1)
    print(
        f"{kind}: {len(stream.events)} events read, connection ended: {stream.ended}; stream "
        f"closed {closed_after} s after the logout; {len(late)} events published more than "
        f"{HEARTBEAT_SECONDS + LOGOUT_ALLOWANCE_SECONDS:.0f} s after the logout received"
        + (f" (the latest {late[-1] - logged_out:.1f} s after)" if late else "")
    )
    return late


def assert_closed_in_time(closed: LogWatch, logged_out: float) -> None:
    assert closed.seen_at is not None, "the stream did not end (reason=access revoked)"
    assert closed.seen_at - logged_out <= HEARTBEAT_SECONDS + CLOSE_SLACK_SECONDS


# A client that is alive (it reads and acknowledges) but ten times slower than the 1 MB/s its
# job publishes: the server's writes to it are stalled.
TRICKLE_BYTES_PER_SECOND = 100 * KIB
STALL_PUBLISH = ("--count", "1000", "--interval", "0.02", "--size", "20000")


@on_backpressure_servers
@pytest.mark.timeout(120)
@pytest.mark.parametrize("output", ["json", "html"])
def test_logout_during_slow_replay_stops_the_stream(
    shared: Shared, kind: str, name: Callable[[str], str], output: str
) -> None:
    """The session is deleted while a long history replays to a slow reader: the stream ends
    within about ``HEARTBEAT_SECONDS`` and no event published later than that reaches it
    (with ``?format=html`` the replay is also slow on the server: rendering)."""
    owner = name("owner")
    # Far more than the kernel's socket buffers hold (several MB): the replay must wait for
    # the client, on both servers.
    history = 100_000
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": history, "size": 100}]}
    query = "last_event_id=0" + ("&format=html" if output == "html" else "")
    rate = 200 * KIB
    with (
        serve(shared, kind, spec, settings(HEARTBEAT_SECONDS=HEARTBEAT_SECONDS)) as (server, made),
        raw_streams() as streams,
        reporters(shared) as start,
    ):
        job_id, session = made.jobs[0], made.sessions[owner]
        closed = LogWatch(
            server, rf"Stream closed: job={job_id} .*reason=access revoked", server.log_offset()
        )
        stream = RawStream.open(
            server.port, job_url(job_id, query), session=session, rcvbuf=SLOW_RCVBUF
        )
        streams.append(stream)
        publisher = start("publish", job_id, "--count", "600", "--interval", "0.05")
        stream.read_slowly(rate, lambda: stream.received >= 150 * KIB, timeout=15)
        assert stream.read_slowly(rate, publisher.times, timeout=15), "nothing published"
        logged_out = logout_while_reading(stream, start, session, rate)
        stream.read_slowly(rate, closed, timeout=HEARTBEAT_SECONDS + CLOSE_SLACK_SECONDS + 3)
        if closed.seen_at is not None:
            stream.read_to_end(timeout=20)
        late = report_logout(f"{kind}/{output}", stream, closed, logged_out)
        assert_closed_in_time(closed, logged_out)
        assert not late, f"{len(late)} events published after logout + heartbeat received"
        assert stream.ended


@on_backpressure_servers
@pytest.mark.timeout(120)
def test_logout_while_direct_writes_are_stalled(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    """A caught-up client reads far slower than its job publishes (the live writes are
    stalled) and its session is deleted: the stream ends within about ``HEARTBEAT_SECONDS``,
    and when the client reads at full speed again nothing published after that reaches it."""
    owner = name("owner")
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": 3, "size": 100}]}
    rate = TRICKLE_BYTES_PER_SECOND
    with (
        serve(shared, kind, spec, settings(HEARTBEAT_SECONDS=HEARTBEAT_SECONDS)) as (server, made),
        raw_streams() as streams,
        reporters(shared) as start,
    ):
        job_id, session = made.jobs[0], made.sessions[owner]
        closed = LogWatch(
            server, rf"Stream closed: job={job_id} .*reason=access revoked", server.log_offset()
        )
        stream = RawStream.open(server.port, job_url(job_id), session=session, rcvbuf=SLOW_RCVBUF)
        streams.append(stream)
        assert stream.read_until(lambda: len(stream.events) >= 3, 10)
        publisher = start("publish", job_id, *STALL_PUBLISH)
        assert stream.read_slowly(rate, publisher.times, timeout=15), "nothing published"
        # 4 s at 1 MB/s: more than the socket buffers hold, the writes are stalled.
        began = publisher.times()[0]
        assert stream.read_slowly(rate, lambda: publisher.reported_after(began + 4), 20), (
            f"the stalled stream ended before the logout:\n{server.log()[-2000:]}"
        )
        logged_out = logout_while_reading(stream, start, session, rate)
        limit = logged_out + HEARTBEAT_SECONDS + LOGOUT_ALLOWANCE_SECONDS
        # Until the stream ends and events published well after the limit exist.
        stream.read_slowly(
            rate,
            lambda: closed() and publisher.reported_after(limit + 0.5),
            timeout=HEARTBEAT_SECONDS + CLOSE_SLACK_SECONDS + 5,
        )
        assert wait_until(lambda: publisher.reported_after(limit + 0.5), 15)
        publisher.stop()
        stream.read_to_end(timeout=20)
        late = report_logout(kind, stream, closed, logged_out)
        assert_closed_in_time(closed, logged_out)
        assert not late, f"{len(late)} events published after logout + heartbeat received"
        assert stream.ended


@on_backpressure_servers
@pytest.mark.timeout(120)
def test_logout_while_session_stream_is_stalled(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    """The stream of all of a session's jobs is stalled (its client reads far slower than the
    job publishes) when the session is deleted: it ends within about ``HEARTBEAT_SECONDS``;
    neither later events nor a job created afterwards reach the client."""
    owner = name("owner")
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": 3, "size": 100}]}
    rate = TRICKLE_BYTES_PER_SECOND
    with (
        serve(shared, kind, spec, settings(HEARTBEAT_SECONDS=HEARTBEAT_SECONDS)) as (server, made),
        raw_streams() as streams,
        reporters(shared) as start,
    ):
        job_id, session, user_id = made.jobs[0], made.sessions[owner], made.users[owner]
        closed = LogWatch(
            server,
            rf"Session stream closed: user={user_id} .*reason=access revoked",
            server.log_offset(),
        )
        stream = RawStream.open(server.port, SESSION_URL, session=session, rcvbuf=SLOW_RCVBUF)
        streams.append(stream)
        assert stream.read_until(lambda: len(stream.events) >= 3, 10)
        publisher = start("publish", job_id, *STALL_PUBLISH)
        assert stream.read_slowly(rate, publisher.times, timeout=15), "nothing published"
        began = publisher.times()[0]
        assert stream.read_slowly(rate, lambda: publisher.reported_after(began + 4), 20), (
            f"the stalled stream ended before the logout:\n{server.log()[-2000:]}"
        )
        logged_out = logout_while_reading(stream, start, session, rate)
        limit = logged_out + HEARTBEAT_SECONDS + LOGOUT_ALLOWANCE_SECONDS
        # (Reading on while the stream is open, here and below.)
        stream.read_slowly(rate, lambda: publisher.reported_after(limit), timeout=15)
        assert wait_until(lambda: publisher.reported_after(limit), 15)
        # A job of the same user, created and published after the logout (and a heartbeat).
        newcomer = start(
            "publish", "--new-job-for", owner, "--count", "20", "--interval", "0.02", "--finish"
        )
        stream.read_slowly(rate, lambda: newcomer.process.poll() is not None, 30)
        new_job = str(newcomer.wait(timeout=30)[0]["job"])
        give_up = logged_out + HEARTBEAT_SECONDS + CLOSE_SLACK_SECONDS + 2
        stream.read_slowly(rate, closed, timeout=max(0.0, give_up - time.time()))
        publisher.stop()
        stream.read_to_end(timeout=20)
        late = report_logout(kind, stream, closed, logged_out)
        of_new_job = [e for e in stream.events if event_data(e).get("job") == new_job]
        print(f"{kind}: {len(of_new_job)} events of the job created after the logout received")
        assert_closed_in_time(closed, logged_out)
        assert not of_new_job, f"{len(of_new_job)} events of a job created after the logout"
        assert not late, f"{len(late)} events published after logout + heartbeat received"
        assert stream.ended


# -- many streams ----------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_streams_per_identity_are_capped(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    """Past ``MAX_STREAMS_PER_IDENTITY`` open streams, a visitor's next stream gets 429 with
    ``Retry-After``; a slot freed is usable again; other visitors are not affected."""
    cap = 4
    guest, member, other = name("guest"), name("member"), name("other")
    spec = {
        "users": [member, other],
        "anonymous": [guest],
        "jobs": [
            {"owner": guest, "events": 2},
            {"owner": member, "events": 2},
            {"owner": other, "events": 2},
        ],
    }
    with (
        serve(shared, kind, spec, settings(MAX_STREAMS_PER_IDENTITY=cap)) as (server, made),
        raw_streams() as streams,
    ):
        offset = server.log_offset()

        def open_stream(session: str, url: str) -> RawStream:
            stream = RawStream.open(server.port, url, session=session)
            streams.append(stream)
            stream.read_head()
            return stream

        refused_statuses: list[int] = []
        for session_name, url in (
            (guest, SESSION_URL),
            (member, job_url(made.jobs[1])),
        ):
            session = made.sessions[session_name]
            accepted = [open_stream(session, url) for _ in range(cap)]
            assert [s.status for s in accepted] == [200] * cap
            for stream in accepted:
                stream.read_retry()
            flood = [open_stream(session, url) for _ in range(10)]
            statuses = [s.status for s in flood]
            refused_statuses.extend(s for s in statuses if s is not None)
            print(f"{kind}: {url}: {cap} open, then 10 more: {statuses}")
            assert statuses == [429] * 10, statuses
            for stream in flood:
                retry_after = stream.headers.get("retry-after", "")
                assert retry_after.isdigit(), stream.headers
                stream.close()
            # Another visitor is not affected.
            bystander = open_stream(made.sessions[other], job_url(made.jobs[2]))
            assert bystander.status == 200
            bystander.read_retry()
            bystander.close()
            # One stream leaves: its slot is free again once the server noticed.
            accepted[0].close()

            def reopened(session: str = session, url: str = url) -> bool:
                stream = open_stream(session, url)
                if stream.status == 200:
                    return True
                stream.close()
                return False

            assert wait_until(reopened, 10, interval=0.2)
        log = server.log(offset)
        assert len(re.findall(r"Stream refused: .*reason=too many streams", log)) >= 20, log
        server.assert_no_errors(offset)


@pytest.mark.timeout(90)
def test_session_streams_share_one_discovery_query(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    """Looking for new jobs costs one query per process per ``POLL_SECONDS`` for all open
    streams of all sessions together, not one per stream (counted by a probe in the server's
    database connection, outside the app)."""
    visitors = [name(f"guest{i}") for i in range(30)]
    spec = {"anonymous": visitors}
    window = 2.0
    with (
        serve(shared, kind, spec, settings(), DJANGO_SSE_ABUSE_COUNT_QUERIES="1") as (
            server,
            made,
        ),
        raw_streams() as streams,
    ):

        def open_streams(names: list[str]) -> None:
            for visitor in names:
                stream = RawStream.open(server.port, SESSION_URL, session=made.sessions[visitor])
                streams.append(stream)
                assert stream.read_head() == 200
                stream.read_retry()

        def selects_per_second() -> float:
            start = time.time() + 0.5  # the streams just opened are past their first look
            wait_until(lambda: time.time() > start + window + 0.3, window + 2)
            times = [
                float(t) for t in re.findall(r"abuse-probe job-select t=([\d.]+)", server.log())
            ]
            return sum(start <= t < start + window for t in times) / window

        open_streams(visitors[:1])
        one = selects_per_second()
        open_streams(visitors[1:])
        many = selects_per_second()
        print(
            f"{kind}: SELECTs on django_sse_job per second: 1 stream {one:.1f}, "
            f"{len(visitors)} streams {many:.1f} (POLL_SECONDS {POLL_SECONDS})"
        )
        assert one > 0, "the probe saw no query: is it installed?"
        assert many <= 2 * one + 2 / POLL_SECONDS, (one, many)
        assert many * POLL_SECONDS <= 3, f"{many * POLL_SECONDS:.1f} queries per poll"
        server.assert_no_errors()


# -- untrusted input ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_job_id_in_url_cannot_forge_log_lines(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    owner = name("owner")
    spec = {"users": [owner]}
    forged = "2026-12-01 23:59:59,000 ERROR django_sse forged"
    with serve(shared, kind, spec, settings()) as (server, made), raw_streams() as streams:
        for newline in ("%0A", "%0D%0A"):
            offset = server.log_offset()
            path = f"/sse/jobs/x{newline}{forged.replace(' ', '%20')}/events/"
            stream = RawStream.open(server.port, path, session=made.sessions[owner])
            streams.append(stream)
            assert stream.read_head() == 404
            assert server.wait_log(r"Stream refused", offset, timeout=5), server.log(offset)
            log = server.log(offset)
            print(f"{kind}: {newline}: log of the request:\n{log}")
            assert not re.search(r"^2026-12-01 23:59:59,000 ", log, re.M), "a forged log line"
            # (The escaped id says ERROR: only a traceback would be one here.)
            assert "Traceback" not in log
        server.assert_alive()


def _csrf_headers(session: str, token: str | None) -> dict[str, str]:
    cookies = [f"{SESSION_COOKIE}={session}"]
    headers = {}
    if token is not None:
        cookies.append(f"{CSRF_COOKIE}={token}")
        headers["X-CSRFToken"] = token
    return {"Cookie": "; ".join(cookies), **headers}


def _post(port: int, path: str, headers: dict[str, str]) -> int:
    stream = RawStream.open(port, path, method="POST", headers=headers, parse=False)
    try:
        return stream.read_head()
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_cancel_is_idempotent(shared: Shared, kind: str, name: Callable[[str], str]) -> None:
    """Many POSTs to a running job's cancel URL (some at once): every one answers 202, and the
    job records one ``cancel_requested`` event."""
    owner = name("owner")
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": 2}]}
    token = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    with serve(shared, kind, spec, settings()) as (server, made):
        job_id = made.jobs[0]
        path = f"/sse/jobs/{job_id}/cancel/"
        headers = _csrf_headers(made.sessions[owner], token)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda _: _post(server.port, path, headers), range(30)))
        recorded = count_events(shared, job_id, "cancel_requested")
        print(f"{kind}: 30 cancel POSTs: statuses {sorted(set(statuses))}, {recorded} events")
        assert statuses == [202] * 30, statuses
        assert recorded == 1
        server.assert_no_errors()


@pytest.mark.timeout(60)
def test_cancel_view_protects_itself_without_csrf_middleware(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    """With ``CsrfViewMiddleware`` removed from ``MIDDLEWARE``, a cross-site POST to the cancel
    view still gets 403 and cancels nothing; a same-site POST with the token works."""
    owner = name("owner")
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": 2}]}
    token = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    with serve(shared, kind, spec, settings(), DJANGO_SSE_ABUSE_NO_CSRF_MIDDLEWARE="1") as (
        server,
        made,
    ):
        job_id, session = made.jobs[0], made.sessions[owner]
        path = f"/sse/jobs/{job_id}/cancel/"
        cross_site = {**_csrf_headers(session, None), "Origin": "http://evil.example"}
        status = _post(server.port, path, cross_site)
        recorded = count_events(shared, job_id, "cancel_requested")
        print(f"{kind}: cross-site POST without CsrfViewMiddleware: {status}, {recorded} events")
        assert status == 403
        assert recorded == 0
        assert _post(server.port, path, _csrf_headers(session, token)) == 202
        assert count_events(shared, job_id, "cancel_requested") == 1


# -- htmx fragments ---------------------------------------------------------------------------


def _first_bytes(server: LiveServer, url: str, session: str, count: int) -> list[float]:
    """Open ``count`` streams, one every 0.3 s (each in a thread, so that all of them fall
    within what is being measured); the seconds each took to its first byte of body."""
    results: list[float] = []

    def probe() -> None:
        opened = time.monotonic()
        stream = RawStream.open(server.port, url, session=session)
        try:
            stream.read_retry(timeout=30)
            assert stream.first_body_at is not None
            results.append(stream.first_body_at - opened)
        finally:
            stream.close()

    threads = []
    for index in range(count):
        if index:
            time.sleep(0.3)  # spacing the probes, not deciding anything
        threads.append(threading.Thread(target=probe, daemon=True))
        threads[-1].start()
    for thread in threads:
        thread.join(40)
    assert len(results) == count, "a stream did not open"
    return results


def _live_latencies(stream: RawStream, publisher: Reporter, count: int) -> list[float]:
    """Read ``count`` more events; each one's arrival minus its publish time."""
    before = len(stream.events)
    assert stream.read_until(lambda: len(stream.events) >= before + count, 60)
    publisher.wait(timeout=30)
    pairs = zip(stream.events[before:], stream.arrivals[before:], strict=True)
    return [arrival - (published_at(event) or arrival) for event, arrival in pairs]


@pytest.mark.timeout(150)
def test_html_replays_do_not_starve_other_streams(
    shared: Shared, kind: str, name: Callable[[str], str]
) -> None:
    """Ten ``?format=html&last_event_id=0`` replays of long histories: another visitor's stream
    opens and gets live events about as fast as before them (rendering does not block the
    event loop)."""
    abuser, visitor = name("abuser"), name("visitor")
    replays, history = 10, 10_000
    spec = {
        "users": [abuser, visitor],
        "jobs": [{"owner": visitor, "events": 0}]
        + [{"owner": abuser, "events": history, "size": 100}] * replays,
    }
    with (
        serve(shared, kind, spec, settings()) as (server, made),
        raw_streams() as streams,
        reporters(shared) as start,
    ):
        own_job, *long_jobs = made.jobs
        own_url = job_url(own_job)
        visitor_session, abuser_session = made.sessions[visitor], made.sessions[abuser]
        warm = RawStream.open(
            server.port,
            job_url(long_jobs[0], "format=html&last_event_id=0"),
            session=abuser_session,
            parse=False,
        )
        streams.append(warm)
        assert warm.read_until(lambda: warm.received > 100 * KIB, 20)
        warm.close()

        quiet_ttfb = _first_bytes(server, own_url, visitor_session, 3)
        live = RawStream.open(server.port, own_url, session=visitor_session)
        streams.append(live)
        live.read_retry()
        quiet_latency = _live_latencies(
            live, start("publish", own_job, "--count", "20", "--interval", "0.1"), 20
        )

        stop = threading.Event()
        readers = [
            RawStream.open(
                server.port,
                job_url(job, "format=html&last_event_id=0"),
                session=abuser_session,
                parse=False,
            )
            for job in long_jobs
        ]
        streams.extend(readers)

        def drain(reader: RawStream) -> None:
            while not stop.is_set() and not reader.ended:
                reader.recv_once(timeout=0.5)

        threads = [threading.Thread(target=drain, args=(r,), daemon=True) for r in readers]
        for thread in threads:
            thread.start()
        try:
            publisher = start("publish", own_job, "--count", "20", "--interval", "0.1")
            busy_result: dict[str, list[float]] = {}
            reader = threading.Thread(
                target=lambda: busy_result.setdefault(
                    "latency", _live_latencies(live, publisher, 20)
                ),
                daemon=True,
            )
            reader.start()
            busy_ttfb = _first_bytes(server, own_url, visitor_session, 3)
            reader.join(90)
            assert "latency" in busy_result, "live events did not arrive"
            busy_latency = busy_result["latency"]
            replayed = [r.received for r in readers]
        finally:
            stop.set()
            for thread in threads:
                thread.join(5)
        q_ttfb, b_ttfb = statistics.median(quiet_ttfb), statistics.median(busy_ttfb)
        q_lat, b_lat = statistics.median(quiet_latency), statistics.median(busy_latency)
        print(
            f"{kind}: first byte (median) {q_ttfb * 1000:.0f} ms quiet, {b_ttfb * 1000:.0f} ms "
            f"during the html replays; live latency (median) {q_lat * 1000:.0f} -> "
            f"{b_lat * 1000:.0f} ms; replays read {[r // KIB for r in replayed]} KiB"
        )
        assert b_ttfb <= 4 * q_ttfb + 1.0, (quiet_ttfb, busy_ttfb)
        assert b_lat <= 2 * q_lat + 0.5, (quiet_latency, busy_latency)
        server.assert_no_errors()

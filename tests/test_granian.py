"""Granian's own bounds: a server django_sse does not know (``django_sse/servers.py``).

Granian's ``send`` waits once it holds a few MiB for a client, but it shows the application
neither its socket nor a way to drop the connection: a stream there carries at most
``MAX_BUFFERED_BYTES`` and ends (``reason=byte budget spent``), and the browser resumes from its
last id. These tests hold it to that, against the same live-server support as the abuse suite
(``tests/live/abuse_support.py``), where ``test_abuse.py``'s back-pressure tests do not apply:

- never-reading sockets asking for a long history cost the worker a measured, bounded amount
  each, not the history;
- a client reading a long job across those ends gets every event once, in order;
- a client that leaves is noticed (Granian #650: a ``send`` after a disconnect raises nothing),
  and its stream ends, within a bound.

Every wait is bounded and waits for a state; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.live.abuse_support import (
    KIB,
    MIB,
    RawStream,
    Shared,
    raw_streams,
    reporters,
    serve,
    shared_database,
    wait_rss_settled,
)
from tests.live.processes import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.abuse,
    pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc"),
]

KIND = "granian"
MAX_BUFFERED_BYTES = 256 * KIB
SETTINGS: dict[str, Any] = {
    "MAX_BUFFERED_BYTES": MAX_BUFFERED_BYTES,
    "SEND_TIMEOUT_SECONDS": 60.0,
    "HEARTBEAT_SECONDS": 60.0,
    "POLL_SECONDS": 0.2,
}
NEVER_READ_RCVBUF = 4 * KIB
# What Granian's worker may keep per never-reading socket on top of its last page (two events):
# the stream's budget, sent into Granian's HTTP/1 buffer and its channel to the socket, where it
# stays, and as much again for the allocator. Measured (Granian 2.8, 256 KiB budget): 0.17 MiB
# per socket with 1 KB events, 0.65 MiB with 60 KB events. With a budget of 64 MiB (in effect
# none) the same sockets cost 4.7 and 20 MiB each and the test fails: Granian's ``send`` waits
# only once it holds a few MiB for a client. Not a bound on Daphne or uvicorn, whose tests in
# test_abuse.py are unchanged.
GRANIAN_SOCKET_BYTES = 2 * MAX_BUFFERED_BYTES


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    with shared_database() as value:
        yield value


@pytest.fixture
def name() -> Callable[[str], str]:
    token = secrets.token_hex(4)
    return lambda label: f"{label}-{token}"


def job_url(job_id: str, query: str = "") -> str:
    return f"/sse/jobs/{job_id}/events/" + (f"?{query}" if query else "")


def seqs(stream: RawStream) -> list[int]:
    return [int(e.last_event_id) for e in stream.events if e.last_event_id.isdigit()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("events", "size", "sockets"),
    [(20_000, 1_000, 8), (300, 60_000, 4)],
    ids=["1KB-events", "60KB-events"],
)
def test_never_reading_replays_hold_bounded_memory_on_granian(
    shared: Shared, name: Callable[[str], str], events: int, size: int, sockets: int
) -> None:
    owner = name("owner")
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": events, "size": size}]}
    with serve(shared, KIND, spec, SETTINGS) as (server, made), raw_streams() as streams:
        job_id, session = made.jobs[0], made.sessions[owner]
        url = job_url(job_id, "last_event_id=0")
        # A reader first, to the end of its connection: code and caches warm, a fair base.
        warm = RawStream.open(server.port, url, session=session, parse=False)
        streams.append(warm)
        assert warm.read_to_end(timeout=30), "a stream on Granian did not end at its budget"
        # Chunks up to the budget: the one that would overflow it is not sent.
        assert MAX_BUFFERED_BYTES // 2 <= warm.received <= MAX_BUFFERED_BYTES, warm.received
        base = wait_rss_settled(server, timeout=10)
        offset = server.log_offset()
        for _ in range(sockets):
            streams.append(
                RawStream.open(server.port, url, session=session, rcvbuf=NEVER_READ_RCVBUF)
            )
        # Each stream gives up on its own, at its budget (the sockets still read nothing).
        ended = wait_until(
            lambda: server.log(offset).count("reason=byte budget spent") >= sockets, 30
        )
        assert ended, server.log(offset)[-3000:]
        peak = wait_rss_settled(server, timeout=30)
        growth = peak - base
        allowed = sockets * (GRANIAN_SOCKET_BYTES + 2 * size) + 4 * MIB
        print(
            f"granian: {sockets} never-reading sockets on {events} x {size} B: RSS "
            f"{base / MIB:.1f} -> {peak / MIB:.1f} MiB, {growth / sockets / MIB:.2f} MiB per "
            f"socket (allowed {allowed / MIB:.1f} MiB in all)"
        )
        assert growth <= allowed, f"+{growth / MIB:.1f} MiB for {sockets} never-reading sockets"
        server.assert_no_errors()


@pytest.mark.timeout(120)
def test_a_long_job_arrives_whole_across_the_ends_of_its_connections(
    shared: Shared, name: Callable[[str], str]
) -> None:
    """A client that reads as a browser does (to each end, then back with its last id) gets
    every event of a job far larger than the budget once, in order."""
    owner = name("owner")
    events, size = 300, 10_000
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": events, "size": size}]}
    with serve(shared, KIND, spec, SETTINGS) as (server, made), reporters(shared) as start:
        job_id, session = made.jobs[0], made.sessions[owner]
        publisher = start("publish", job_id, "--count", "20", "--interval", "0.05", "--finish")
        received: list[int] = []
        connections = 0
        # Each connection carries about MAX_BUFFERED_BYTES: the job needs about 13.
        for _ in range(40):
            headers = {"Last-Event-ID": str(received[-1])} if received else {}
            with raw_streams() as streams:
                stream = RawStream.open(
                    server.port, job_url(job_id), session=session, headers=headers
                )
                streams.append(stream)
                connections += 1
                assert stream.read_to_end(timeout=30), f"connection {connections} did not end"
                assert stream.status == 200, stream.status
                received += seqs(stream)
                types = [e.type for e in stream.events]
            if "succeeded" in types:
                break
        publisher.wait(timeout=30)
        total = events + 20 + 1
        print(f"granian: {total} events of {size} B in {connections} connections")
        assert received == list(range(1, total + 1)), "events lost or repeated across the ends"
        assert connections >= events * size // MAX_BUFFERED_BYTES
        server.assert_no_errors()


@pytest.mark.timeout(60)
def test_a_client_that_leaves_ends_its_stream(shared: Shared, name: Callable[[str], str]) -> None:
    """Granian #650: a ``send`` after the client left raises nothing. The stream still ends,
    through Django's ``http.disconnect`` (Granian's ``receive``), within two seconds of the
    client's close, with live events still being published to it."""
    owner = name("owner")
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": 3, "size": 100}]}
    with (
        serve(shared, KIND, spec, SETTINGS) as (server, made),
        raw_streams() as streams,
        reporters(shared) as start,
    ):
        job_id, session = made.jobs[0], made.sessions[owner]
        offset = server.log_offset()
        stream = RawStream.open(server.port, job_url(job_id), session=session)
        streams.append(stream)
        assert stream.read_until(lambda: len(stream.events) >= 3, 10)
        publisher = start("publish", job_id, "--count", "200", "--interval", "0.05")
        assert stream.read_until(lambda: len(stream.events) >= 5, 10), "no live event"
        stream.close()
        left = time.monotonic()
        closed = server.wait_log(
            rf"Stream closed: job={job_id} .*reason=client went away", offset, timeout=10
        )
        took = time.monotonic() - left
        print(f"granian: stream closed {took:.2f} s after its client left")
        assert closed, f"the stream did not end:\n{server.log(offset)[-3000:]}"
        assert took < 2.0
        publisher.stop()
        server.assert_no_errors(offset)

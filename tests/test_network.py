"""Ordinary network breakage between a real server and its client, in network namespaces.

The server (Daphne or uvicorn) runs in one namespace, the client (``tests/live/netns_client.py``)
in another, joined by a veth pair (``tests/live/netns.py``): a client that vanishes without FIN or
RST (its packets dropped), a link losing 5 % of its packets, a slow link (a token bucket on
the server's end). The server, a setup process and publishers share a SQLite file; the server
uses the in-memory channel layer, so events from a publisher arrive through the database poll.

Needs root, ``ip``, ``tc`` and ``iptables``: skipped without them, failed under ``CI=true``.
Every wait is bounded in time and waits for a state; all traffic stays inside the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.live.netns import (
    CommandFailed,
    Link,
    connections_of,
    listening,
    missing_requirements,
    unavailable,
    veth_link,
)
from tests.live.processes import (
    ROOT,
    child_env,
    close_pipes,
    read_log,
    run_module,
    start_publisher,
    stop_process,
    wait_until,
)

# Each wait below is bounded on its own; the sum of the bounds is above pytest's 60 s default.
pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.timeout(120)]

SERVERS = ("daphne", "uvicorn")
PORT = 8000  # the server namespace is ours alone
POLL_SECONDS = 0.2
# Short, so that a vanished client must be noticed within seconds.
HEARTBEAT_SECONDS = 2.0
# Generous for a loaded machine, yet far below Linux's ~15 minutes of retransmissions.
VANISHED_BOUND_SECONDS = 5 * HEARTBEAT_SECONDS
MAX_BUFFERED_BYTES = 256 * 1024
# What the server's memory may grow by, per client, while slow clients read a large replay.
# Several clients at once, so that what the process needs once whatever the number of streams
# is shared out: SQLite's memory for a page query on the one stream database thread is ~2 MiB
# with pages of 1,000 small events.
MEMORY_BOUND_BYTES = 4 * MAX_BUFFERED_BYTES
SLOW_CLIENTS = 6
# The kernel keeps no more than this for each of the server's sockets (so that what the
# client does not take yet cannot hide there).
KERNEL_SEND_BUFFER_BYTES = 256 * 1024
LOSS_PROBABILITY = 0.05
LOSSY_STEPS = 300
OUTAGE_AT_SEQ = 100
# The slow link: 4.5 MB/s, 750 kB/s for each client; the large replays take about 4 s.
SLOW_RATE = "36mbit"
SLOW_BURST = "64kb"
SLOW_LATENCY = "200ms"
EVENT_DATA_BYTES = 1000
LARGE_EVENTS = 3000
WARMUP_EVENTS = 300
SERVER_ERRORS = ("Traceback", " ERROR ", "CRITICAL")


class Jobs:
    """Indexes of the jobs made by the setup process."""

    VANISHED = 0  # running, 3 stored events
    LOSSY = {"daphne": 1, "uvicorn": 2}  # pending: published during the test
    WARMUP = 3  # finished, WARMUP_EVENTS of EVENT_DATA_BYTES
    LARGE = 4  # finished, LARGE_EVENTS of EVENT_DATA_BYTES
    COUNT = 5


# -- the namespaces ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    missing = missing_requirements()
    if missing:
        unavailable(", ".join(missing))
    with contextlib.ExitStack() as stack:
        try:
            made = stack.enter_context(veth_link())
            made.probe()
            made.limit_server_send_buffer(KERNEL_SEND_BUFFER_BYTES)
        except CommandFailed as exc:
            unavailable(
                f"network namespaces, a veth pair, iptables' statistic match, tc tbf ({exc})"
            )
        yield made


@pytest.fixture
def net(link: Link) -> Iterator[Link]:
    """The link, with whatever a test adds to it (packet rules, shaping) removed afterwards."""
    try:
        yield link
    finally:
        link.clear_client_rules()
        link.unshape()


# -- the shared database ----------------------------------------------------------------------


@dataclass
class Data:
    env: dict[str, str]
    tmp: Path
    owner_session: str
    jobs: list[str]
    last_seq: dict[int, int]


def process_env(**values: str) -> dict[str, str]:
    """The helper processes' environment: ours without the switches meant for this process
    (no Redis or PostgreSQL is reachable from the server's namespace), plus ``values``."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
        and not k.startswith("DJANGO_SSE_")
    }
    return child_env(inherited, **values)


@pytest.fixture(scope="module")
def data(link: Link) -> Iterator[Data]:
    tmp = Path(tempfile.mkdtemp(prefix="django_sse_netns_"))
    env = process_env(
        DJANGO_SETTINGS_MODULE="tests.live.netns_settings",
        DJANGO_SSE_E2E_DB=str(tmp / "db.sqlite3"),
        DJANGO_SSE_E2E_POLL_SECONDS=str(POLL_SECONDS),
        DJANGO_SSE_E2E_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
        DJANGO_SSE_E2E_MAX_BUFFERED_BYTES=str(MAX_BUFFERED_BYTES),
    )
    try:
        made = json.loads(run_module(env, "tests.live", "e2e", "setup", "--jobs", str(Jobs.COUNT)))
        jobs = made["jobs"]
        histories = {
            Jobs.VANISHED: ("--events", "2"),
            Jobs.WARMUP: ("--events", str(WARMUP_EVENTS), "--finish"),
            Jobs.LARGE: ("--events", str(LARGE_EVENTS), "--finish"),
        }
        last_seq = {}
        for index, args in histories.items():
            out = run_module(
                env,
                "tests.live",
                "e2e",
                "history",
                jobs[index],
                "--data-bytes",
                str(EVENT_DATA_BYTES),
                *args,
            )
            last_seq[index] = json.loads(out)["last_seq"]
        yield Data(env, tmp, made["owner_session"], jobs, last_seq)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the server -------------------------------------------------------------------------------


def server_command(kind: str, address: str, port: int) -> list[str]:
    application = "tests.asgi:application"
    if kind == "daphne":
        return [sys.executable, "-m", "daphne", "-b", address, "-p", str(port), application]
    return [
        sys.executable, "-m", "uvicorn", application, "--host", address, "--port", str(port),
        "--lifespan", "off", "--no-access-log", "--timeout-graceful-shutdown", "3",
    ]  # fmt: skip


@dataclass
class Server:
    kind: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, job_id: str) -> str:
        return f"http://{self.address}:{PORT}/sse/jobs/{job_id}/events/"

    def log(self) -> str:
        return read_log(self.log_path)

    def closed_lines(self, job_id: str) -> list[str]:
        return [line for line in self.log().splitlines() if f"Stream closed: job={job_id}" in line]

    def rss_bytes(self) -> int:
        return status_bytes(self.pid, "VmRSS")

    def assert_no_errors(self) -> None:
        text = self.log()
        assert not any(marker in text for marker in SERVER_ERRORS), f"server log:\n{text}"
        assert self.process.poll() is None, f"the server died:\n{text}"


def status_bytes(pid: int, field: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status``, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, link: Link, data: Data) -> Iterator[Server]:
    """A fresh server in the server namespace (so that one test's streams never weigh on
    another's figures), started with ``ip netns exec``: its pid is the server's own."""
    kind: str = request.param
    log_path = data.tmp / f"{kind}-{request.node.name}.log".replace("/", "_")
    command = link.in_server(*server_command(kind, link.server_address, PORT))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=data.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        wait_until(
            lambda: process.poll() is not None or listening(process.pid, link.server_address, PORT),
            timeout=30,
            interval=0.1,
        )
        assert process.poll() is None, f"{kind} exited:\n{read_log(log_path)}"
        assert listening(process.pid, link.server_address, PORT), (
            f"{kind} did not listen within 30 s:\n{read_log(log_path)}"
        )
        yield Server(kind, process, link.server_address, log_path)
    finally:
        stop_process(process)


# -- the clients ------------------------------------------------------------------------------


class JsonLines:
    """A helper process whose stdout is JSON lines, read as they come (each wait bounded by a
    deadline); its stderr is kept in a file, or read when it exits."""

    def __init__(self, process: subprocess.Popen[Any], stderr_path: Path | None = None) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self.buffer = b""
        self.lines: list[dict[str, Any]] = []
        self.closed = False

    def wait_for(
        self,
        wanted: str | Callable[[dict[str, Any]], bool],
        timeout: float,
        tick: Callable[[], object] | None = None,
        since: int = 0,
    ) -> dict[str, Any]:
        """The first line from the ``since``-th on that has the key ``wanted`` (or for which
        ``wanted(line)`` is true); ``tick()`` is called about every 50 ms meanwhile."""
        match = (lambda line: wanted in line) if isinstance(wanted, str) else wanted
        deadline = time.monotonic() + timeout
        stdout = self.process.stdout
        assert stdout is not None
        for _ in range(int(timeout / 0.05) + 100):
            for line in self.lines[since:]:
                if match(line):
                    return line
            if tick is not None:
                tick()
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {wanted!r} within {timeout} s: {self.report()}"
            assert not self.closed, f"the process ended before {wanted!r}: {self.report()}"
            readable, _, _ = select.select([stdout], [], [], min(0.05, remaining))
            if readable:
                data = os.read(stdout.fileno(), 65536)
                self.closed = not data
                self.buffer += data
                *complete, self.buffer = self.buffer.split(b"\n")
                self.lines += [json.loads(line) for line in complete if line.strip()]
        raise AssertionError(f"too many reads before {wanted!r}")

    def report(self) -> str:
        if self.stderr_path is not None:
            stderr = read_log(self.stderr_path)
        else:
            stderr = "(not read while the process runs)"
            if self.process.poll() is not None and self.process.stderr is not None:
                stderr = self.process.stderr.read()
        return f"exit={self.process.poll()} lines={self.lines} stderr:\n{stderr[-3000:]}"


@pytest.fixture
def clients(link: Link, data: Data) -> Iterator[Callable[..., JsonLines]]:
    """Start clients in the client namespace; stopped (by pid) at teardown."""
    started: list[JsonLines] = []

    def start(mode: str, url: str, *args: str) -> JsonLines:
        stderr_path = data.tmp / f"client-{os.getpid()}-{len(started)}-{time.monotonic_ns()}.err"
        command = [sys.executable, "-m", "tests.live", "netns-client", mode, url]
        command += ["--cookie", data.owner_session, *args]
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                link.in_client(*command),
                cwd=ROOT,
                env=data.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        client = JsonLines(process, stderr_path)
        started.append(client)
        return client

    yield start
    for client in started:
        stop_process(client.process)
        close_pipes(client.process)


@pytest.fixture
def publishers(data: Data) -> Iterator[Callable[[str, int, float], JsonLines]]:
    """Start ``python -m tests.live e2e publish`` processes (in our namespace: they only write to
    the database); stopped (by pid) at teardown."""
    started: list[JsonLines] = []

    def start(job_id: str, steps: int, interval: float) -> JsonLines:
        publisher = JsonLines(start_publisher(data.env, job_id, steps, interval))
        started.append(publisher)
        return publisher

    yield start
    for publisher in started:
        stop_process(publisher.process)
        close_pipes(publisher.process)


def finished_stream(server: Server, job_id: str, timeout: float = 10) -> list[str]:
    """The server's "Stream closed" lines for ``job_id`` once one says the job finished."""
    wait_until(
        lambda: any("reason=job finished" in line for line in server.closed_lines(job_id)),
        timeout,
        interval=0.1,
    )
    return server.closed_lines(job_id)


# -- the tests --------------------------------------------------------------------------------


def test_stream_of_a_vanished_client_is_freed_within_a_few_heartbeats(
    server: Server, net: Link, data: Data, clients: Callable[..., JsonLines]
) -> None:
    job_id = data.jobs[Jobs.VANISHED]
    client = clients("hold", server.url(job_id), "--events", "3", "--deadline", "30")
    ready = client.wait_for("ready", timeout=30)
    assert ready["seqs"] == [1, 2, 3]
    assert server.closed_lines(job_id) == [], "the stream closed while its client was there"
    held = connections_of(server.pid, PORT)
    assert len(held) == 1, held

    # The client's process lives on, its socket open: only its packets vanish (no FIN, no RST).
    net.drop_client_packets()
    dropped = time.monotonic()
    wait_until(lambda: server.closed_lines(job_id), VANISHED_BOUND_SECONDS, interval=0.1)
    elapsed = time.monotonic() - dropped
    closed = server.closed_lines(job_id)
    left = connections_of(server.pid, PORT)
    print(
        f"{server.kind}: vanished client; stream closed after {elapsed:.1f} s "
        f"(bound {VANISHED_BOUND_SECONDS:.0f} s, heartbeat {HEARTBEAT_SECONDS:.0f} s): {closed}; "
        f"the server's connections before: {held}, after: {left}"
    )
    assert closed, (
        f"{server.kind} did not free the stream of a vanished client within "
        f"{VANISHED_BOUND_SECONDS:.0f} s ({VANISHED_BOUND_SECONDS / HEARTBEAT_SECONDS:.0f} "
        f"heartbeats); the server still holds its connection: {left}"
    )
    assert elapsed <= VANISHED_BOUND_SECONDS + 1
    server.assert_no_errors()


def test_client_on_a_lossy_link_gets_every_event_once_in_order_across_an_outage(
    server: Server,
    net: Link,
    data: Data,
    clients: Callable[..., JsonLines],
    publishers: Callable[[str, int, float], JsonLines],
) -> None:
    job_id = data.jobs[Jobs.LOSSY[server.kind]]
    total = LOSSY_STEPS + 2
    net.lose_client_packets(LOSS_PROBABILITY)
    # A read silent for two heartbeats means a dead connection: reconnect with Last-Event-ID.
    idle = str(2 * HEARTBEAT_SECONDS + 1)
    client = clients("follow", server.url(job_id), "--idle", idle, "--deadline", "80")
    client.wait_for("open", timeout=30)
    publisher = publishers(job_id, LOSSY_STEPS, 0.01)

    # Midway, the link goes away altogether (Wi-Fi lost) until the client has given up on its
    # connection; the job goes on meanwhile. Then the lossy link is back.
    publisher.wait_for(lambda line: line["seq"] >= OUTAGE_AT_SEQ, timeout=30)
    outage = len(client.lines)
    net.drop_client_packets()
    lost = client.wait_for("lost", timeout=30, since=outage)
    net.clear_client_rules()
    net.lose_client_packets(LOSS_PROBABILITY)

    summary = client.wait_for("done", timeout=60)
    publisher.wait_for(lambda line: line["seq"] == total, timeout=30)
    published = [line["seq"] for line in publisher.lines]
    assert published == list(range(1, total + 1))
    seqs = summary["seqs"]
    duplicated = len(seqs) - len(set(seqs))
    missing = sorted(set(published) - set(seqs))
    print(
        f"{server.kind}: {LOSS_PROBABILITY:.0%} loss and an outage from seq "
        f"{lost['last_event_id']}; {len(seqs)} events received of {total} (missing "
        f"{len(missing)}, duplicated {duplicated}) over {summary['connections']} connection(s) "
        f"in {summary['seconds']} s; ended by: {summary['errors']}"
    )
    assert summary["done"], f"the client did not reach the terminal event: {summary['errors']}"
    assert seqs == list(range(1, total + 1)), f"missing {missing[:20]}, duplicated {duplicated}"
    assert summary["connections"] >= 2
    assert finished_stream(server, job_id), "the server did not log the end of the stream"
    server.assert_no_errors()


def test_slow_link_large_replays_arrive_whole_with_bounded_server_memory(
    server: Server, net: Link, data: Data, clients: Callable[..., JsonLines]
) -> None:
    net.shape(SLOW_RATE, SLOW_BURST, SLOW_LATENCY)
    # A small replay the same way first: the server's code paths, database thread and
    # connection are warm before its memory is measured.
    warmup_id = data.jobs[Jobs.WARMUP]
    warmup = clients("follow", server.url(warmup_id), "--deadline", "40").wait_for("done", 45)
    assert warmup["seqs"] == list(range(1, data.last_seq[Jobs.WARMUP] + 1))
    assert finished_stream(server, warmup_id)

    job_id = data.jobs[Jobs.LARGE]
    total = data.last_seq[Jobs.LARGE]
    before = server.rss_bytes()
    peak_before = status_bytes(server.pid, "VmHWM")
    samples = [before]
    readers = [
        clients("follow", server.url(job_id), "--idle", "10", "--deadline", "80")
        for _ in range(SLOW_CLIENTS)
    ]
    summaries = [
        reader.wait_for("done", 90, tick=lambda: samples.append(server.rss_bytes()))
        for reader in readers
    ]
    peak_after = status_bytes(server.pid, "VmHWM")
    # The kernel's high-water mark catches a peak between two samples.
    peak = max(*samples, peak_after if peak_after > peak_before else 0)
    growth = peak - before
    per_client = growth / SLOW_CLIENTS
    size = LARGE_EVENTS * EVENT_DATA_BYTES
    print(
        f"{server.kind}: slow link {SLOW_RATE}; {SLOW_CLIENTS} replays of {total} events "
        f"(~{size / 2**20:.1f} MiB each) in {max(s['seconds'] for s in summaries)} s over "
        f"{[s['connections'] for s in summaries]} connection(s); server RSS "
        f"{before / 2**20:.1f} MiB before, peak +{growth / 2**20:.2f} MiB, "
        f"+{per_client / 2**20:.2f} MiB per client (bound {MEMORY_BOUND_BYTES / 2**20:.2f} MiB,"
        f" {len(samples)} samples)"
    )
    for summary in summaries:
        seqs = summary["seqs"]
        assert summary["done"], f"a client did not reach the terminal event: {summary['errors']}"
        assert seqs == list(range(1, total + 1)), (
            f"{len(seqs)} events, {len(seqs) - len(set(seqs))} duplicated"
        )
    assert per_client < MEMORY_BOUND_BYTES, (
        f"{server.kind} grew by {per_client / 2**20:.2f} MiB per client while {SLOW_CLIENTS} "
        f"slow clients read a {size / 2**20:.1f} MiB replay each (MAX_BUFFERED_BYTES = "
        f"{MAX_BUFFERED_BYTES // 1024} KiB, bound {MEMORY_BOUND_BYTES // 1024} KiB per client)"
    )
    assert finished_stream(server, job_id)
    server.assert_no_errors()

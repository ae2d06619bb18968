"""Helpers of ``test_topology.py``: a PostgreSQL database per run, Daphne server processes,
publisher processes, a Redis server of the test's own (to stop and restart), and subscribers
that read a stream in a thread and reconnect with ``Last-Event-ID`` the way ``EventSource`` does.

Every process started here is registered in a :class:`Processes` and killed at teardown; every
loop is bounded in count and in time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live.processes import (
    child_env,
    close_pipes,
    delete_redis_keys,
    free_port,
    pg_connect,
    pg_database,
    read_log,
    run_id,
    run_module,
    start_daphne,
    start_publisher,
    stop_process,
    wait_listening,
    wait_until,
)
from tests.live.services import DATABASE_URL, require, require_redis
from tests.sse_parser import Parser

# The layer class the suite runs on (the nox matrix sets it; empty means the core layer).
LAYER = os.environ.get("REDIS_LAYER") or "core"
TERMINAL_TYPES = frozenset({"succeeded", "failed", "cancelled"})
SESSION_COOKIE = "sessionid"


def require_services() -> tuple[str, str]:
    """PostgreSQL and Redis URLs; a missing one fails under CI=true and skips elsewhere."""
    # tests.live.services falls back to this URL too when DATABASE_URL is empty (the SQLite run).
    default = "postgres://postgres@127.0.0.1:5432/test"
    database_url = DATABASE_URL if DATABASE_URL.startswith("postgres") else default
    return require("PostgreSQL", database_url, 5432), require_redis()


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        message = "the redis-server executable is not installed (needed to stop Redis)"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI=true requires it)", pytrace=False)
        pytest.skip(message)
    return path


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """Every process a test starts, stopped (in reverse order) by :meth:`stop_all`."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[Any]] = []

    def add(self, process: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop_process(process)
            close_pipes(process)
        self.started.clear()


class RedisServer:
    """A redis-server of the test's own on a spare port, to stop and restart at will."""

    def __init__(self, processes: Processes, log_dir: Path) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        self.processes = processes
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.process = self.processes.add(
                subprocess.Popen(
                    [
                        self.binary,
                        "--port",
                        str(self.port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        process = self.process
        wait_until(lambda: process.poll() is not None or self.ping(), timeout=10, interval=0.05)
        assert self.ping(), f"redis-server did not answer:\n{self.log_path.read_text()}"

    def stop(self) -> None:
        assert self.process is not None
        stop_process(self.process)
        assert not self.ping()


@dataclass
class Daphne:
    """One Daphne server process; :meth:`restart` starts a new one on the same port."""

    processes: Processes
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    incarnations: int = 0

    def start(self) -> Daphne:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.incarnations += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- daphne start #{self.incarnations}\n".encode())
            log.flush()
            self.process = self.processes.add(
                # stdout: the access log
                start_daphne(self.port, self.env, stdout=subprocess.DEVNULL, stderr=log)
            )
        return self

    def wait_listening(self, timeout: float = 20) -> Daphne:
        process = self.process
        assert process is not None
        wait_listening(process, self.port, self.log, timeout)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (no group is left, no stream is closed cleanly)."""
        assert self.process is not None and self.process.poll() is None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def restart(self) -> Daphne:
        return self.start().wait_listening()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def url(self, job_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/sse/jobs/{job_id}/events/"

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def log(self, since: int = 0) -> str:
        return read_log(self.log_path, since)


def start_servers(
    processes: Processes, env: dict[str, str], log_dir: Path, names: Iterable[str]
) -> list[Daphne]:
    """Start several servers at once, then wait until each listens."""
    servers = [Daphne(processes, env, log_dir / f"daphne-{name}.log").start() for name in names]
    for server in servers:
        server.wait_listening()
    return servers


# -- the shared database -----------------------------------------------------------------------


@dataclass
class Site:
    """One PostgreSQL database with an owner, their session and unused jobs, shared by every
    process of the module; :meth:`env` makes the environment of a server or publisher."""

    database_url: str
    redis_url: str
    db_name: str
    run_id: str
    log_dir: Path
    owner_session: str
    jobs: list[str]
    prefixes: list[tuple[str, str]] = field(default_factory=list)  # (redis url, prefix)

    def take_job(self) -> str:
        assert self.jobs, "no job left: raise JOBS"
        return self.jobs.pop(0)

    def env(
        self,
        *,
        poll_seconds: float,
        heartbeat_seconds: float,
        redis_url: str | None = None,
        layer: str = LAYER,
        prefix: str = "",
    ) -> dict[str, str]:
        redis_url = redis_url or self.redis_url
        prefix = f"django_sse_topo_{self.run_id}{prefix}"
        self.prefixes.append((redis_url, prefix))
        return child_env(
            DJANGO_SETTINGS_MODULE="tests.live.e2e_settings",
            DATABASE_URL=self.database_url,
            REDIS_URL=redis_url,
            REDIS_LAYER=layer,
            DJANGO_SSE_E2E_DB=self.db_name,
            DJANGO_SSE_E2E_PREFIX=prefix,
            DJANGO_SSE_E2E_POLL_SECONDS=str(poll_seconds),
            DJANGO_SSE_E2E_HEARTBEAT_SECONDS=str(heartbeat_seconds),
        )

    def stored_seqs(self, job_id: str) -> tuple[list[int], str, int]:
        """The job's stored event numbers, its status and its ``last_seq``."""
        with pg_connect(self.database_url, self.db_name) as db:
            seqs = [
                int(row[0])
                for row in db.execute(
                    "SELECT seq FROM django_sse_jobevent WHERE job_id = %s ORDER BY seq",
                    [job_id],
                ).fetchall()
            ]
            status, last_seq = db.execute(
                "SELECT status, last_seq FROM django_sse_job WHERE id = %s", [job_id]
            ).fetchone()
        return seqs, str(status), int(last_seq)


@contextlib.contextmanager
def make_site(jobs: int) -> Iterator[Site]:
    database_url, redis_url = require_services()
    rid = run_id()
    log_dir = Path(tempfile.mkdtemp(prefix="django_sse_topo_"))
    site = Site(database_url, redis_url, f"django_sse_topo_{rid}", rid, log_dir, "", [])
    try:
        with pg_database(database_url, site.db_name):
            env = site.env(poll_seconds=1, heartbeat_seconds=15)
            made = json.loads(run_module(env, "tests.live", "e2e", "setup", "--jobs", str(jobs)))
            site.owner_session = made["owner_session"]
            site.jobs = list(made["jobs"])
            yield site
    finally:
        _delete_redis_keys(site.prefixes)
        if os.environ.get("DJANGO_SSE_TOPOLOGY_KEEP_LOGS"):
            print(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def _delete_redis_keys(prefixes: list[tuple[str, str]]) -> None:
    """Remove the keys the core layer left on the shared Redis (pub/sub leaves none)."""
    for url, prefix in set(prefixes):
        with contextlib.suppress(Exception):
            delete_redis_keys(url, f"{prefix}*", timeout=2)


# -- publishers --------------------------------------------------------------------------------


@dataclass
class Published:
    times: dict[int, float]  # seq -> time.time() right after its commit
    types: dict[int, str]
    stderr: str
    returncode: int


class Publisher:
    """``python -m tests.live e2e publish`` in its own process."""

    def __init__(
        self, processes: Processes, env: dict[str, str], job_id: str, steps: int, interval: float
    ) -> None:
        self.started_at = time.time()
        self.process: subprocess.Popen[str] = processes.add(
            start_publisher(env, job_id, steps, interval)
        )

    def pause(self) -> None:
        """Hold the publisher (SIGSTOP) where it is, to resume it when a test has seen a state
        it needs (a publisher paced by the clock would otherwise race a slow restart)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def finish(self, timeout: float = 30) -> Published:
        out, err = self.process.communicate(timeout=timeout)
        times: dict[int, float] = {}
        types: dict[int, str] = {}
        for line in out.splitlines():
            record = json.loads(line)
            times[record["seq"]] = record["t"]
            types[record["seq"]] = record["type"]
        return Published(times, types, err, self.process.returncode)


# -- subscribers -------------------------------------------------------------------------------


@dataclass
class Connection:
    url: str
    last_event_id: str | None
    opened_at: float
    status: int | None = None
    seqs: list[int] = field(default_factory=list)
    closed_at: float | None = None
    end: str = ""


def _reset_on_close(response: httpx.Response) -> bool:
    """Make closing the response's socket send a TCP reset (an abrupt cut)."""
    network_stream = response.extensions.get("network_stream")
    sock = network_stream.get_extra_info("socket") if network_stream is not None else None
    if sock is None:
        return False
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return True
    return False


class Subscriber(threading.Thread):
    """An ``EventSource``-like reader of one job's stream, in a thread.

    It timestamps every event and heartbeat as it comes off the wire. When the connection is
    lost (or cut on purpose after ``cut_after`` events), it waits ``reconnect_delay`` and
    connects again with ``Last-Event-ID``: to the next URL of ``urls`` once a connection was
    established (so ``[A, B]`` moves to B after losing A), to the same URL after a refused one.
    It stops after a terminal event, a 204, :meth:`stop`, ``max_connects`` or ``deadline``.
    """

    def __init__(
        self,
        name: str,
        urls: list[str],
        session: str,
        *,
        cut_after: int | None = None,
        reconnect_delay: float = 0.2,
        deadline: float = 60,
        max_connects: int = 150,
    ) -> None:
        super().__init__(name=f"subscriber-{name}", daemon=True)
        self.label = name
        self.urls = urls
        self.session = session
        self.cut_after = cut_after
        self.reconnect_delay = reconnect_delay
        self.deadline = time.monotonic() + deadline
        self.max_connects = max_connects
        self.connections: list[Connection] = []
        self.events: list[tuple[int, str, float]] = []  # (seq, type, arrival time)
        self.pings: list[float] = []
        self.cut_at: float | None = None
        self.finished = False
        self.failure: str | None = None
        self._stop_event = threading.Event()

    # -- results --

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _, _ in self.events]

    @property
    def duplicates(self) -> list[int]:
        return sorted(seq for seq, count in Counter(self.seqs).items() if count > 1)

    @property
    def arrivals(self) -> dict[int, float]:
        first: dict[int, float] = {}
        for seq, _, at in self.events:
            first.setdefault(seq, at)
        return first

    def opened(self) -> bool:
        return any(c.status == 200 for c in self.connections)

    def established(self) -> int:
        """How many connections the server answered with 200."""
        return sum(1 for c in list(self.connections) if c.status == 200)

    def missing(self, expected: Iterable[int]) -> list[int]:
        got = set(self.seqs)
        return [seq for seq in expected if seq not in got]

    def describe(self) -> str:
        parts = [
            f"{c.url.split('/sse/')[0]} id={c.last_event_id} status={c.status} "
            f"seqs={c.seqs} end={c.end!r}"
            for c in self.connections
        ]
        return f"{self.label}: " + " | ".join(parts) + (f" failure={self.failure}")

    # -- control --

    def stop(self) -> None:
        self._stop_event.set()

    def wait_opened(self, timeout: float = 10) -> None:
        wait_until(lambda: self.opened() or not self.is_alive(), timeout)
        assert self.opened(), f"stream not opened: {self.describe()}"

    def _should_stop(self) -> bool:
        return self._stop_event.is_set() or time.monotonic() >= self.deadline

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test, never lost in a thread
            self.failure = repr(exc)

    def _run(self) -> None:
        index = 0
        last_id: str | None = None
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=0)
        timeout = httpx.Timeout(5.0, connect=2.0)
        with httpx.Client(timeout=timeout, limits=limits, trust_env=False) as http:
            while not self._should_stop() and len(self.connections) < self.max_connects:
                connection = Connection(self.urls[index], last_id, time.time())
                self.connections.append(connection)
                try:
                    self._read(http, connection)
                except (httpx.HTTPError, OSError) as exc:
                    connection.end = f"error {exc.__class__.__name__}"
                connection.closed_at = time.time()
                if self.events:
                    last_id = str(self.events[-1][0])
                if self.finished or connection.status == 204:
                    return
                if connection.status is not None and index + 1 < len(self.urls):
                    index += 1
                self._stop_event.wait(self.reconnect_delay)

    def _read(self, http: httpx.Client, connection: Connection) -> None:
        headers = {"Accept": "text/event-stream", "Cookie": f"{SESSION_COOKIE}={self.session}"}
        if connection.last_event_id is not None:
            headers["Last-Event-ID"] = connection.last_event_id
        with http.stream("GET", connection.url, headers=headers) as response:
            connection.status = response.status_code
            if response.status_code != 200:
                response.read()
                connection.end = f"status {response.status_code}"
                return
            parser = Parser()
            for chunk in response.iter_raw():
                now = time.time()
                comments = len(parser.comments)
                for event in parser.feed(chunk):
                    seq = int(event.last_event_id)
                    self.events.append((seq, event.type, now))
                    connection.seqs.append(seq)
                    if event.type in TERMINAL_TYPES:
                        self.finished = True
                self.pings.extend(now for c in parser.comments[comments:] if c == "ping")
                cut = self.cut_after is not None and self.cut_at is None
                if cut and len(self.events) >= (self.cut_after or 0):
                    _reset_on_close(response)
                    self.cut_at = now
                    connection.end = "cut by the client"
                    return
                if self._should_stop():
                    connection.end = "stopped"
                    return
            connection.end = "finished" if self.finished else "ended by the server"


def start_subscribers(subscribers: list[Subscriber], timeout: float = 10) -> None:
    for subscriber in subscribers:
        subscriber.start()
    for subscriber in subscribers:
        subscriber.wait_opened(timeout)


def join_subscribers(subscribers: list[Subscriber], timeout: float) -> None:
    """Wait for every subscriber to end (bounded), then stop any still running."""
    deadline = time.monotonic() + timeout
    for subscriber in subscribers:
        subscriber.join(max(0.0, deadline - time.monotonic()))
    for subscriber in subscribers:
        if subscriber.is_alive():
            subscriber.stop()
    for subscriber in subscribers:
        subscriber.join(10)
    for subscriber in subscribers:
        assert subscriber.failure is None, subscriber.describe()


# -- figures -----------------------------------------------------------------------------------


def lags_by_seq(
    subscriber: Subscriber, published: dict[int, float], seqs: Iterable[int]
) -> dict[int, float]:
    """``{seq: arrival - commit time}`` for the events of ``seqs`` the subscriber received."""
    arrivals = subscriber.arrivals
    return {seq: arrivals[seq] - published[seq] for seq in seqs if seq in arrivals}


def latencies(
    subscriber: Subscriber, published: dict[int, float], seqs: Iterable[int]
) -> list[float]:
    return list(lags_by_seq(subscriber, published, seqs).values())


def summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"n={len(values)} median={statistics.median(values) * 1000:.0f} ms "
        f"p90={p90 * 1000:.0f} ms max={max(values) * 1000:.0f} ms"
    )

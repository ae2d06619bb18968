"""Support of ``test_abuse.py``: live Daphne, uvicorn and Granian servers in subprocesses (each
started as ``tests.live.processes.server_command`` says), their logs and memory, the helper tool,
and raw HTTP/1.1 clients that read as slowly as a test wants (or never).

The servers, the helper tool (``python -m tests.live abuse``) and the publishers share one database:
a SQLite file in a temporary directory, or a PostgreSQL database made for the run when
``DATABASE_URL`` is set. With ``REDIS_URL`` they share a Redis channel layer (one prefix per
run). Every wait is bounded and waits for a state; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.live.processes import (
    ROOT,
    SERVER_KINDS,
    child_env,
    close_pipes,
    create_database,
    delete_redis_keys,
    drop_database,
    free_port,
    read_log,
    run_id,
    run_module,
    start_server,
    stop_process,
    wait_listening,
    wait_until,
    worker_pid,
)
from tests.sse_parser import Parser

DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
USE_POSTGRES = DATABASE_URL.startswith("postgres")
SESSION_COOKIE = "sessionid"
CSRF_COOKIE = "csrftoken"
TOOL = ("tests.live", "abuse")
KIB = 1024
MIB = 1024 * 1024

# A traceback or an error record in a server's log.
TRACEBACK_OR_ERROR = re.compile(r"Traceback|\bERROR\b|CRITICAL|Exception in ASGI|Exception inside")


# -- the shared database and environment ------------------------------------------------------


@dataclass
class Shared:
    """What every process of a run shares: the database and the environment to reach it."""

    env: dict[str, str]
    tmp: Path
    db_name: str
    prefix: str

    def env_for(self, settings: dict[str, Any] | None = None, **values: str) -> dict[str, str]:
        """The environment of a server (or tool) with ``settings`` merged into ``DJANGO_SSE``."""
        return {**self.env, "DJANGO_SSE_ABUSE_SETTINGS": json.dumps(settings or {}), **values}

    def tool(self, *args: str, timeout: float = 120) -> Any:
        """Run ``python -m tests.live abuse`` to its end; its last line of output, decoded."""
        out = run_module(self.env, *TOOL, *args, timeout=timeout)
        return json.loads(out.splitlines()[-1]) if out.strip() else None

    def start_tool(self, *args: str) -> subprocess.Popen[str]:
        """``python -m tests.live abuse`` in the background (its output is read by the caller)."""
        return subprocess.Popen(
            [sys.executable, "-m", *TOOL, *args],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@contextlib.contextmanager
def shared_database() -> Iterator[Shared]:
    """A migrated database for the run, dropped (or deleted) at the end."""
    rid = run_id()
    tmp = Path(tempfile.mkdtemp(prefix="django_sse_abuse_"))
    if USE_POSTGRES:
        db_name = f"django_sse_abuse_{rid}"
        create_database(DATABASE_URL, db_name)
    else:
        db_name = str(tmp / "abuse.sqlite3")
    prefix = f"django_sse_abuse_{rid}"
    env = child_env(
        DJANGO_SETTINGS_MODULE="tests.live.abuse_settings",
        DJANGO_SSE_E2E_DB=db_name,
        DJANGO_SSE_E2E_PREFIX=prefix,
        DJANGO_SSE_E2E_POLL_SECONDS="0.2",
    )
    shared = Shared(env, tmp, db_name, prefix)
    try:
        shared.tool("migrate")
        yield shared
    finally:
        if USE_POSTGRES:
            drop_database(DATABASE_URL, db_name)
        if REDIS_URL:
            with contextlib.suppress(Exception):
                delete_redis_keys(REDIS_URL, f"{prefix}*")
        shutil.rmtree(tmp, ignore_errors=True)


def finished_output(process: subprocess.Popen[str], timeout: float = 60) -> list[Any]:
    """Wait for a tool process (bounded); its output lines, decoded."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"tool failed:\n{out}\n{err}"
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# -- servers ----------------------------------------------------------------------------------


@dataclass
class LiveServer:
    kind: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    # The process that serves the requests (Granian's worker; the server itself otherwise).
    serving_pid: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def log(self, since: int = 0) -> str:
        return read_log(self.log_path, since)

    def wait_log(self, pattern: str, since: int = 0, timeout: float = 10) -> re.Match[str] | None:
        """The first match of ``pattern`` in the log after ``since``, waiting up to ``timeout``."""
        regex = re.compile(pattern)
        return wait_until(lambda: regex.search(self.log(since)), timeout)

    def rss(self) -> int:
        """The resident memory of the process that serves the requests, in bytes."""
        status = Path(f"/proc/{self.serving_pid or self.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert found is not None, status
        return int(found.group(1)) * KIB

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"{self.kind} died:\n{self.log()}"

    def assert_no_errors(self, since: int = 0) -> None:
        text = self.log(since)
        assert not TRACEBACK_OR_ERROR.search(text), f"{self.kind} log has errors:\n{text}"
        self.assert_alive()


def _start_process(
    kind: str, port: int, env: dict[str, str], log_dir: Path, extra: tuple[str, ...] = ()
) -> Any:
    log_path = log_dir / f"{kind}.log"
    with open(log_path, "wb") as log, open(log_dir / "access.log", "wb") as access:
        access_log = log_dir / "daphne-access.log" if kind == "daphne" else None
        process = start_server(
            kind, port, env, stdout=access, stderr=log, access_log=access_log, extra=extra
        )
        return process, log_path


@contextlib.contextmanager
def live_server(
    kind: str,
    env: dict[str, str],
    prepare: Callable[[], Any] | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[LiveServer]:
    """A ``kind`` server (one of ``SERVER_KINDS``, with the options ``extra``) on a free port
    with ``env``; ``prepare`` runs while it starts. Stopped (SIGTERM, then SIGKILL) at the end."""
    assert kind in SERVER_KINDS, kind
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix=f"django_sse_abuse_{kind}_"))
    process, log_path = _start_process(kind, port, env, log_dir, extra)
    try:
        if prepare is not None:
            prepare()
        wait_listening(process, port, lambda: read_log(log_path), timeout=30, name=kind)
        serving = worker_pid(process) if kind == "granian" else process.pid
        yield LiveServer(kind, process, port, log_path, serving)
    finally:
        stop_process(process)
        shutil.rmtree(log_dir, ignore_errors=True)


def wait_rss_settled(server: LiveServer, timeout: float, window: float = 1.5) -> int:
    """The server's RSS once it moved by less than 1 MiB over ``window`` seconds (or after
    ``timeout``): the peak of what it kept for the clients."""
    samples: list[tuple[float, int]] = []

    def settled() -> bool:
        now = time.monotonic()
        samples.append((now, server.rss()))
        recent = [rss for t, rss in samples if t >= now - window]
        return samples[0][0] <= now - window and max(recent) - min(recent) < MIB

    wait_until(settled, timeout, interval=0.25)
    return max(rss for _, rss in samples[-3:])


# -- raw HTTP clients -------------------------------------------------------------------------


class ChunkedDecoder:
    """An incremental decoder of an HTTP/1.1 chunked body."""

    def __init__(self) -> None:
        self.buffer = b""
        self.remaining = 0  # bytes of the current chunk still to come
        self.need_crlf = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = bytearray()
        while not self.done:
            if self.remaining:
                take = self.buffer[: self.remaining]
                out += take
                self.buffer = self.buffer[len(take) :]
                self.remaining -= len(take)
                if self.remaining:
                    break
                self.need_crlf = True
            if self.need_crlf:
                if len(self.buffer) < 2:
                    break
                self.buffer = self.buffer[2:]
                self.need_crlf = False
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self.buffer[:line_end].split(b";")[0], 16)
            self.buffer = self.buffer[line_end + 2 :]
            if size == 0:
                self.done = True
            self.remaining = size
        return bytes(out)


@dataclass
class RawStream:
    """One HTTP/1.1 request on a raw socket, its response read only when (and as fast as) the
    test asks; the body parsed as Server-Sent Events unless ``parse`` is False."""

    sock: socket.socket
    parse: bool = True
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    parser: Parser = field(default_factory=Parser)
    arrivals: list[float] = field(default_factory=list)
    received: int = 0  # body bytes
    first_body_at: float | None = None  # time.monotonic() of the first body byte
    ended: bool = False
    reset: bool = False
    _head: bytes = b""
    _chunked: ChunkedDecoder | None = None
    _length: int | None = None
    _text: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")())

    @classmethod
    def open(
        cls,
        port: int,
        path: str,
        *,
        session: str | None = None,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        body: bytes = b"",
        rcvbuf: int | None = None,
        parse: bool = True,
    ) -> RawStream:
        """Connect and send the request; ``rcvbuf`` shrinks the socket's receive buffer
        (before connecting, so the TCP window is small from the start)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            lines = [
                f"{method} {path} HTTP/1.1",
                f"Host: 127.0.0.1:{port}",
                "Accept: text/event-stream",
            ]
            if session is not None:
                lines.append(f"Cookie: {SESSION_COOKIE}={session}")
            lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
            if body or method == "POST":
                lines.append(f"Content-Length: {len(body)}")
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        except BaseException:
            sock.close()
            raise
        return cls(sock, parse)

    @property
    def events(self) -> list[Any]:
        return self.parser.events

    # -- reading ---------------------------------------------------------------------------

    def recv_once(self, max_bytes: int = 65536, timeout: float = 1.0) -> int:
        """One ``recv`` (waiting at most ``timeout``); the number of bytes read (0: nothing
        came, or the stream ended)."""
        if self.ended:
            return 0
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(max_bytes)
        except TimeoutError:
            return 0
        except (ConnectionResetError, BrokenPipeError):
            self.ended = self.reset = True
            return 0
        if not data:
            self.ended = True
            return 0
        self._take(data)
        return len(data)

    def _take(self, data: bytes) -> None:
        if self.status is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end].decode("latin-1"), self._head[end + 4 :]
            status_line, *header_lines = head.split("\r\n")
            self.status = int(status_line.split()[1])
            for line in header_lines:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                self._chunked = ChunkedDecoder()
            elif "content-length" in self.headers:
                self._length = int(self.headers["content-length"])
            if self.status in (204, 304) or self._length == 0:
                self.ended = True
                return
        if self._chunked is not None:
            body = self._chunked.feed(data)
            if self._chunked.done:
                self.ended = True
        else:
            body = data
            if self._length is not None:
                self._length -= len(body)
                if self._length <= 0:
                    self.ended = True
        if body:
            self._body(body)

    def _body(self, body: bytes) -> None:
        now = time.time()
        if self.first_body_at is None:
            self.first_body_at = time.monotonic()
        self.received += len(body)
        if self.parse:
            for _ in self.parser.feed(self._text.decode(body)):
                self.arrivals.append(now)

    def read_until(self, done: Callable[[], object], timeout: float) -> bool:
        """Read until ``done()`` is true (True), or the stream ended or ``timeout`` passed
        (``done()``'s last value)."""
        deadline = time.monotonic() + timeout
        for _ in range(1_000_000):
            if done():
                return True
            left = deadline - time.monotonic()
            if self.ended or left <= 0:
                break
            self.recv_once(timeout=min(left, 0.5))
        return bool(done())

    def read_head(self, timeout: float = 10) -> int:
        assert self.read_until(lambda: self.status is not None, timeout), "no response head"
        assert self.status is not None
        return self.status

    def read_retry(self, timeout: float = 10) -> None:
        """Read up to the ``retry:`` field every stream starts with (unparsed: any body)."""

        def seen() -> bool:
            return self.parser.retry is not None if self.parse else self.received > 0

        assert self.read_until(seen, timeout), (
            f"no retry field within {timeout} s (status {self.status}, ended {self.ended})"
        )

    def read_to_end(self, timeout: float) -> bool:
        return self.read_until(lambda: self.ended, timeout)

    def read_slowly(
        self, bytes_per_second: float, until: Callable[[], object], timeout: float
    ) -> bool:
        """Read about ``bytes_per_second`` on average until ``until()`` is true, the stream
        ends or ``timeout`` passes; whether ``until()`` became true. (With a small receive
        buffer each read is small, and the reads frequent.)"""
        started = time.monotonic()
        deadline = started + timeout
        got = 0
        for _ in range(1_000_000):
            if until():
                return True
            now = time.monotonic()
            if self.ended or now >= deadline:
                break
            ahead = got / bytes_per_second - (now - started)
            if ahead > 0:
                time.sleep(min(ahead, deadline - now, 0.05))
                continue
            # All the receive buffer holds: a partial read leaves the TCP window closed (the
            # kernel waits for half the buffer to be free before it opens it again).
            got += self.recv_once(timeout=min(0.2, deadline - now))
        return bool(until())

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset (as a vanished client's next write would see)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


@contextlib.contextmanager
def raw_streams() -> Iterator[list[RawStream]]:
    """A list to put raw streams in; each is closed at the end."""
    streams: list[RawStream] = []
    try:
        yield streams
    finally:
        for stream in streams:
            stream.close()


def event_data(event: Any) -> dict[str, Any]:
    """The data of an event as a dict (``{}`` if it is not a JSON object)."""
    try:
        value = json.loads(event.data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


_HTML_TIME = re.compile(r"\bt=(\d+\.\d+)")


def published_at(event: Any) -> float | None:
    """The publish time carried by an event's data (a job stream's, wrapped by the stream of
    all of a session's jobs, or its ``message`` shown in an HTML fragment), if any."""
    data = event_data(event)
    if not data:
        found = _HTML_TIME.search(event.data)
        return float(found.group(1)) if found else None
    inner = data.get("data") if "job" in data and "seq" in data else data
    value = inner.get("t") if isinstance(inner, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


# -- helper processes that report as they go ---------------------------------------------------


class Reporter:
    """A tool process whose JSON output lines are collected as they come (by a thread)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                with self._lock:
                    self.lines.append(json.loads(line))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.lines)

    def times(self) -> list[float]:
        """The commit times reported so far."""
        return [float(line["t"]) for line in self.snapshot() if "t" in line]

    def reported_after(self, moment: float) -> bool:
        """Whether an event committed after ``moment`` (a Unix time) was reported."""
        return any(t > moment for t in self.times())

    def wait(self, timeout: float) -> list[dict[str, Any]]:
        """Wait for the process to end (bounded); all its lines. Asserts it succeeded."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.process)
            raise
        self._reader.join(5)
        err = self.process.stderr.read() if self.process.stderr is not None else ""
        assert self.process.returncode == 0, f"tool failed:\n{err}"
        return self.snapshot()

    def stop(self) -> None:
        stop_process(self.process)
        close_pipes(self.process)


@contextlib.contextmanager
def reporters(shared: Shared) -> Iterator[Callable[..., Reporter]]:
    """Start ``python -m tests.live abuse`` processes that report as they go; each is stopped at the
    end."""
    started: list[Reporter] = []

    def start(*args: str) -> Reporter:
        reporter = Reporter(shared.start_tool(*args))
        started.append(reporter)
        return reporter

    try:
        yield start
    finally:
        for reporter in started:
            reporter.stop()


# -- a server with the data of one test -------------------------------------------------------


@dataclass
class Made:
    """What ``python -m tests.live abuse make`` created for a test."""

    sessions: dict[str, str]
    users: dict[str, int]
    jobs: list[str]


@contextlib.contextmanager
def serve(
    shared: Shared,
    kind: str,
    spec: dict[str, Any],
    settings: dict[str, Any] | None = None,
    extra: tuple[str, ...] = (),
    **env: str,
) -> Iterator[tuple[LiveServer, Made]]:
    """A ``kind`` server (with the options ``extra``) with ``settings`` in ``DJANGO_SSE`` (and
    ``env``), and the data of ``spec`` (made by the helper tool while the server starts)."""
    made: dict[str, Any] = {}

    def prepare() -> None:
        made.update(shared.tool("make", json.dumps(spec)))

    with live_server(kind, shared.env_for(settings, **env), prepare, extra) as server:
        yield server, Made(made["sessions"], made["users"], made["jobs"])

"""Load-client worker process: N SSE connections on raw asyncio sockets.

The orchestrator (``harness.py``) drives each worker through a pipe:

- ``("open", spec)``: open ``spec["count"]`` connections (at most ``spec["concurrency"]``
  connecting at once), wait until each has received its first body chunk (the ``retry:`` line or
  a first comment), reply with how many made it.
- ``("collect", {"timeout": s})``: wait until every connection has every expected event or the
  timeout passes; reply with counts and the publish->receipt latencies (array of doubles).
- ``("status", {})``: connections still open, bytes received.
- ``("storm", {"t_back": t})``: the reconnect storm's per-connection accounting (see
  ``storm.catch_up``): when each connection had every event published before ``t``.
- ``("admission", {})``: each connection's connect attempt, first body chunk, first event and
  whole replay, as wall-clock times (see ``admission_http.timings``).

Reconnect storms (``spec["reconnect"]``): a connection that ends, or cannot connect, opens again
after the ``retry:`` delay of its stream with ``Last-Event-ID``, as a browser's EventSource does,
trying the next of ``spec["ports"]`` at once when one refuses (a load balancer's health check).
Its bitmap of received events lives on, so loss and duplicates count over all its connections.

Saturation (``spec["progress_file"]``): the worker writes the fewest events any of its open
connections has (an int64 at ``progress_slot``) every few ms, for the harness to pace the
publisher on.
- ``("close", {})``: close everything and exit.

Every wait is bounded; traffic goes to the host given (127.0.0.1 only).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import mmap
import struct
import time
from typing import Any

from benchmarks.sse import ChunkedDecoder, SSEParser

# The reconnection delay of a stream that sent no ``retry:`` field (browsers choose their own:
# a few seconds).
DEFAULT_RETRY_MS = 3000


class Conn(asyncio.Protocol):
    __slots__ = (
        "bytes",
        "chunked",
        "closed",
        "decoder",
        "error",
        "head",
        "headers_done",
        "last_progress",
        "parser",
        "port_index",
        "pub_t",
        "reconnects",
        "recv_at",
        "request",
        "seen",
        "status",
        "subscribed",
        "subscribed_event",
        "t_complete",
        "t_first_chunk",
        "t_first_event",
        "t_lost",
        "t_resumed",
        "t_start",
        "transport",
        "unique",
        "w",
    )

    def __init__(
        self, worker: Worker, request: bytes = b"", port_index: int = 0, t_start: float = 0.0
    ) -> None:
        self.w = worker
        self.request = request or worker.request
        self.port_index = port_index
        self.reconnects = 0
        self.t_resumed = 0.0  # first body chunk of the latest reconnection (-1: awaited)
        self.t_lost = 0.0  # when the latest connection ended
        # Admission (S9), wall-clock: connect attempt, first body byte, first expected event,
        # every expected event (0.0: not yet).
        self.t_start = t_start
        self.t_first_chunk = 0.0
        self.t_first_event = 0.0
        self.t_complete = 0.0
        # Storm accounting: receipt time and publish time of each event (by index).
        self.recv_at: array.array[float] | None = None
        self.pub_t: array.array[float] | None = None
        if worker.reconnect:
            self.recv_at = array.array("d", bytes(8 * worker.n_expected))
            self.pub_t = array.array("d", bytes(8 * worker.n_expected))
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.headers_done = False
        self.status = 0
        self.chunked = False
        self.decoder = ChunkedDecoder()
        self.parser = SSEParser()
        self.subscribed = False
        self.seen = bytearray(worker.n_expected)
        self.unique = 0
        self.closed = False
        self.bytes = 0
        self.last_progress = -1
        self.error = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.closed = False
        request = self.request
        if self.w.reconnect and self.parser.last_id:
            # What a browser's EventSource sends when it reconnects.
            request = request[:-2] + f"Last-Event-ID: {self.parser.last_id}\r\n\r\n".encode()
        self.transport.write(request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.w.closing:
            self.w.disconnects += 1
            if not self.subscribed:
                self.error = self.error or f"closed before first chunk (status {self.status})"
            if self.w.reconnect and not self.error.startswith("status"):
                self.t_lost = time.time()
                self.w.schedule_reconnect(self)
                return
        self.w.check_done()

    def retry_seconds(self) -> float:
        """The delay before this stream reconnects: its ``retry:`` field, else the default."""
        return (self.parser.retry if self.parser.retry is not None else DEFAULT_RETRY_MS) / 1000

    def reset_for_reconnect(self) -> None:
        """A new response on the same logical stream: the HTTP and chunk state start over, the
        SSE parser keeps its last id and retry delay (as EventSource does)."""
        self.head = b""
        self.headers_done = False
        self.status = 0
        self.chunked = False
        self.decoder = ChunkedDecoder()
        last_id, retry, comments = self.parser.last_id, self.parser.retry, self.parser.comments
        self.parser = SSEParser()
        self.parser.last_id, self.parser.retry = last_id, retry
        self.parser.comments = comments
        self.t_resumed = -1.0

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.bytes += len(data)
        if not self.headers_done:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.error = "header too long"
                    self.transport.close()  # type: ignore[union-attr]
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            self.headers_done = True
            lines = head.split(b"\r\n")
            try:
                self.status = int(lines[0].split()[1])
            except (IndexError, ValueError):
                self.status = -1
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
            if self.status != 200 or not headers.get(b"content-type", b"").startswith(
                b"text/event-stream"
            ):
                self.error = f"status {self.status} content-type {headers.get(b'content-type')!r}"
                self.w.http_errors += 1
                self.transport.close()  # type: ignore[union-attr]
                return
            self.chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
        if self.chunked:
            data = self.decoder.feed(data)
        if not data:
            return
        if not self.subscribed:
            self.subscribed = True
            self.t_first_chunk = now
            self.w.on_subscribed()
        if self.t_resumed < 0:
            self.t_resumed = now
        events = self.parser.feed(data)
        if not events:
            return
        w = self.w
        want = w.event_type
        for etype, payload, _id in events:
            if etype != want:
                w.other_events += 1
                continue
            try:
                obj = json.loads(payload)
            except ValueError:
                w.bad_payloads += 1
                continue
            if w.mode == "progress":
                current = obj.get("current", -1)
                if current > self.last_progress:
                    self.last_progress = current
                if current == w.n_expected:
                    w.progress_done_at.append(now)
                    w.received += 1
                    self.unique = w.n_expected
                continue
            i = obj.get("i", -1)
            if 0 <= i < w.n_expected:
                if self.seen[i]:
                    w.dups += 1
                else:
                    self.seen[i] = 1
                    self.unique += 1
                    if not self.t_first_event:
                        self.t_first_event = now
                    if self.unique == w.n_expected:
                        self.t_complete = now
                    if self.recv_at is not None and self.pub_t is not None:
                        self.recv_at[i] = now
                        self.pub_t[i] = obj["t"]
                    w.received += 1
                    w.lat.append(now - obj["t"])
                    w.recv_t.append(now)
                    w.recv_i.append(i)
                    if w.first_recv == 0.0:
                        w.first_recv = now
                    w.last_recv = now
            else:
                w.unexpected += 1
        if self.unique >= w.n_expected:
            w.check_done()


class Worker:
    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.closing = False
        self.n_expected = 0
        self.event_type = "bench"
        self.mode = "bench"
        self.request = b""
        self.subscribed = 0
        self.received = 0
        self.dups = 0
        self.unexpected = 0
        self.other_events = 0
        self.bad_payloads = 0
        self.http_errors = 0
        self.disconnects = 0
        self.connect_errors: list[str] = []
        self.lat = array.array("d")
        self.recv_i = array.array("l")
        self.recv_t = array.array("d")
        self.first_recv = 0.0
        self.last_recv = 0.0
        self.progress_done_at: list[float] = []
        self._sub_event: asyncio.Event | None = None
        self._done_event: asyncio.Event | None = None
        self._sub_target = 0
        # Reconnect storms.
        self.reconnect = False
        self.host = ""
        self.ports: list[int] = []
        self.reconnect_attempts = 0
        self.refused = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._progress: mmap.mmap | None = None

    def on_subscribed(self) -> None:
        self.subscribed += 1
        if self._sub_event is not None and self.subscribed >= self._sub_target:
            self._sub_event.set()

    def check_done(self) -> None:
        if self._done_event is None or self._done_event.is_set():
            return
        for c in self.conns:
            # A storm's connection waiting for its retry delay is not done either.
            waiting = c.closed and self.reconnect and not c.error
            if c.unique < self.n_expected and (not c.closed or waiting):
                return
        self._done_event.set()

    def schedule_reconnect(self, conn: Conn) -> None:
        task = asyncio.get_running_loop().create_task(self._reconnect(conn, conn.retry_seconds()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconnect(self, conn: Conn, delay: float) -> None:
        """Bounded: gives up after 60 attempts (3 minutes at the default retry delay)."""
        loop = asyncio.get_running_loop()
        for _attempt in range(60):
            await asyncio.sleep(delay)
            if self.closing:
                return
            for step in range(len(self.ports)):
                index = (conn.port_index + step) % len(self.ports)
                self.reconnect_attempts += 1
                conn.reset_for_reconnect()
                try:
                    await asyncio.wait_for(
                        loop.create_connection(lambda: conn, self.host, self.ports[index]), 20
                    )
                except (OSError, asyncio.TimeoutError):
                    self.refused += 1
                    continue
                conn.port_index = index
                conn.reconnects += 1
                return
        conn.error = conn.error or "gave up reconnecting"
        self.check_done()

    async def _write_progress(self, slot: int) -> None:
        """Saturation pacing: the fewest events any open connection has, every 5 ms."""
        assert self._progress is not None
        while not self.closing:
            least = min((c.unique for c in self.conns if not c.closed), default=1 << 62)
            struct.pack_into("q", self._progress, 8 * slot, least)
            await asyncio.sleep(0.005)

    def request_for(self, host: str, port: int, path: str, cookie: str) -> bytes:
        headers = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
        ]
        if cookie:
            headers.append(f"Cookie: {cookie}")
        return ("\r\n".join(headers) + "\r\n\r\n").encode()

    async def open(self, spec: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.n_expected = int(spec["n_expected"])
        self.event_type = spec.get("event_type", "bench")
        self.mode = spec.get("mode", "bench")
        self.reconnect = bool(spec.get("reconnect"))
        host, port = spec["host"], int(spec["port"])
        self.host = host
        self.ports = [int(p) for p in spec.get("ports", [port])]
        cookie = spec.get("cookie", "")
        self.request = self.request_for(host, port, spec["path"], cookie)
        paths = spec.get("paths") or [spec["path"]]
        first = len(self.conns)
        if spec.get("progress_file") and self._progress is None:
            self._progress = map_file(spec["progress_file"])
            task = loop.create_task(self._write_progress(int(spec.get("progress_slot", 0))))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        count = int(spec["count"])
        self._sub_event = asyncio.Event()
        self._sub_target = self.subscribed + count
        sem = asyncio.Semaphore(int(spec.get("concurrency", 50)))
        started = time.monotonic()
        connect_timeout = float(spec.get("connect_timeout", 20))

        async def one(k: int) -> None:
            index = (first + k) % len(self.ports)
            path = paths[(first + k) % len(paths)]
            request = self.request_for(host, self.ports[index], path, cookie)
            async with sem:
                t_start = time.time()
                try:
                    _t, conn = await asyncio.wait_for(
                        loop.create_connection(
                            lambda: Conn(self, request, index, t_start), host, self.ports[index]
                        ),
                        connect_timeout,
                    )
                    self.conns.append(conn)
                except Exception as exc:
                    self.connect_errors.append(repr(exc))
                    self._sub_target -= 1

        await asyncio.gather(*(one(k) for k in range(count)))
        connected = time.monotonic() - started
        if self.subscribed < self._sub_target:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._sub_event.wait(), float(spec.get("sub_timeout", 60)))
        return {
            "connected": len(self.conns),
            "subscribed": self.subscribed,
            "connect_errors": len(self.connect_errors),
            "connect_error_sample": self.connect_errors[:3],
            "http_errors": self.http_errors,
            "error_sample": [c.error for c in self.conns if c.error][:3],
            "connect_seconds": connected,
            "open_seconds": time.monotonic() - started,
        }

    async def collect(self, spec: dict[str, Any]) -> dict[str, Any]:
        self._done_event = asyncio.Event()
        self.check_done()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._done_event.wait(), float(spec["timeout"]))
        return self.snapshot(with_latencies=True)

    def snapshot(self, with_latencies: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "connections": len(self.conns),
            "open": sum(1 for c in self.conns if not c.closed),
            "subscribed": self.subscribed,
            "received": self.received,
            "dups": self.dups,
            "unexpected": self.unexpected,
            "other_events": self.other_events,
            "bad_payloads": self.bad_payloads,
            "http_errors": self.http_errors,
            "disconnects": self.disconnects,
            "first_recv": self.first_recv,
            "last_recv": self.last_recv,
            "bytes": sum(c.bytes for c in self.conns),
            "complete_conns": sum(1 for c in self.conns if c.unique >= self.n_expected),
            "progress_done_at": min(self.progress_done_at) if self.progress_done_at else None,
            "last_progress": max((c.last_progress for c in self.conns), default=-1),
            "comments": sum(c.parser.comments for c in self.conns),
            "reconnects": sum(c.reconnects for c in self.conns),
            "reconnect_attempts": self.reconnect_attempts,
            "refused": self.refused,
            "gave_up": sum(1 for c in self.conns if c.error == "gave up reconnecting"),
        }
        if with_latencies:
            out["lat"] = self.lat.tobytes()
            out["recv_i"] = self.recv_i.tobytes()
            out["recv_t"] = self.recv_t.tobytes()
        return out

    def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        for c in self.conns:
            if c.transport is not None:
                c.transport.abort()


def map_file(path: str) -> mmap.mmap:
    """The shared progress file, mapped (a few bytes: opening it once does not block)."""
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), 0)


def worker_main(pipe: Any) -> None:
    """Entry point of a worker process."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        w = Worker()
        while True:
            ready = await loop.run_in_executor(None, pipe.poll, 900)
            if not ready:
                w.close()
                return
            cmd, spec = pipe.recv()
            if cmd == "open":
                pipe.send(await w.open(spec))
            elif cmd == "collect":
                pipe.send(await w.collect(spec))
            elif cmd == "status":
                pipe.send(w.snapshot())
            elif cmd == "storm":
                from benchmarks.storm import catch_up

                pipe.send(catch_up(w.conns, float(spec["t_back"])))
            elif cmd == "admission":
                from benchmarks.admission_http import timings

                pipe.send(timings(w.conns))
            elif cmd == "close":
                w.close()
                await asyncio.sleep(0.2)
                pipe.send({"closed": True})
                return

    asyncio.run(main())

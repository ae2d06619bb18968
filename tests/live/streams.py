"""Reading a live server's event streams over real HTTP with httpx, chunk by chunk, with the
WHATWG parser (``tests/sse_parser.py``): what the end-to-end, fault, Celery and topology tests
open against their servers.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.sse_parser import Parser

SESSION_COOKIE = "sessionid"
CONTENT_TYPE = "text/event-stream; charset=utf-8"


@dataclass
class Stream:
    """One streaming GET, read chunk by chunk with the WHATWG parser."""

    response: httpx.Response
    close_response: Callable[[], object]
    parser: Parser = field(default_factory=Parser)
    raw: bytes = b""
    arrivals: dict[int, float] = field(default_factory=dict)
    ended: bool = False
    chunks: Iterator[bytes] | None = None

    @property
    def seqs(self) -> list[int]:
        return [int(e.last_event_id) for e in self.parser.events]

    def read_chunk(self) -> bytes:
        """The next chunk off the wire (each read is bounded by the client's read timeout)."""
        if self.ended:
            return b""
        if self.chunks is None:
            self.chunks = self.response.iter_raw()
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.ended = True
            return b""
        self.take(chunk, time.time())
        return chunk

    def take(self, chunk: bytes, now: float) -> None:
        """Keep the raw bytes and parse ``chunk``, noting when each event arrived."""
        self.raw += chunk
        for event in self.parser.feed(chunk):
            self.arrivals.setdefault(int(event.last_event_id), now)

    def read_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            if done():
                return
            assert not self.ended, f"stream ended before {what}; got {self.seqs}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s; got {self.seqs}"
            self.read_chunk()
        raise AssertionError(f"too many chunks before {what}")

    def read_first_chunk(self, timeout: float = 10) -> None:
        self.read_until(lambda: self.parser.retry is not None, timeout, "retry field")

    def read_to_end(self, timeout: float) -> None:
        self.read_until(lambda: self.ended, timeout, "end of the stream")

    def abort(self) -> bool:
        """Cut the connection abruptly: a TCP reset instead of an orderly close. Returns
        whether the reset could be arranged (else the connection is just closed)."""
        network_stream = self.response.extensions.get("network_stream")
        sock = network_stream.get_extra_info("socket") if network_stream is not None else None
        reset = False
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                reset = True
        self.close()
        return reset

    def close(self) -> None:
        self.close_response()


def client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(10.0, connect=5.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=0),
        trust_env=False,
        **kwargs,
    )


def open_stream(
    http: httpx.Client, url: str, session: str | None, headers: dict[str, str] | None = None
) -> Stream:
    all_headers = {"Accept": "text/event-stream", "Accept-Encoding": "gzip"}
    if session is not None:
        all_headers["Cookie"] = f"{SESSION_COOKIE}={session}"
    all_headers.update(headers or {})
    context = http.stream("GET", url, headers=all_headers)
    response = context.__enter__()
    return Stream(response, lambda: context.__exit__(None, None, None))

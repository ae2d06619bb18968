"""The ceiling: a raw asyncio HTTP/1.1 server that encodes each event once and writes the same
bytes to every open socket (chunked transfer encoding, like Daphne and uvicorn).

GET /events                        -> an SSE stream (retry line first)
GET /bench/publish?run=&n=&rate=   -> start publishing on this event loop
GET /bench/stats?run=              -> the publisher's stats as JSON ({} while running)

``--drop-every K`` / ``--dup-every K`` inject faults (event i with i % K == 0 is not sent / sent
twice to every stream): the harness self-test uses them to check its loss and duplicate counts.

The storm self-test: ``--cut-at K`` closes every stream just before event K (a crash, as the
clients see it); a request with ``Last-Event-ID: L`` gets every event from index L on (id is
index + 1), shifted by ``--resume-skew`` (+1: one event lost per resume, -1: one sent twice).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from benchmarks.schedule import run_async

streams: set[asyncio.Transport] = set()
runs: dict[str, dict[str, Any]] = {}
sent: list[bytes] = []  # every event's chunk, by index: what a resume replays
ARGS: argparse.Namespace


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Handler(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        streams.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        head = self.buf.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        line = head[0].decode()
        last_id = next(
            (int(h.split(b":", 1)[1]) for h in head[1:] if h.lower().startswith(b"last-event-id:")),
            None,
        )
        self.buf = b""
        target = line.split()[1]
        url = urlsplit(target)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        t = self.transport
        assert t is not None
        if url.path == "/events":
            t.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunk(b"retry: %d\n\n" % ARGS.retry_ms)
            )
            if last_id is not None:
                t.write(b"".join(sent[max(0, last_id + ARGS.resume_skew) :]))
            streams.add(t)
        elif url.path == "/bench/publish":
            run = q["run"]
            runs[run] = {}
            asyncio.get_running_loop().create_task(
                publish(run, int(q["n"]), float(q["rate"]), float(q.get("max", 600)))
            )
            self.reply(t, {"started": run})
        elif url.path == "/bench/stats":
            self.reply(t, runs.get(q["run"], {}))
        else:
            t.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    @staticmethod
    def reply(t: asyncio.Transport, obj: Any) -> None:
        body = json.dumps(obj).encode()
        t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
        )
        t.close()


async def publish(run: str, n: int, rate: float, max_seconds: float) -> None:
    drop, dup = ARGS.drop_every, ARGS.dup_every

    def send(i: int, t: float) -> None:
        if i == ARGS.cut_at:
            runs[run]["cut_time"] = time.time()
            for s in list(streams):
                s.close()  # what was written still goes out first
            streams.clear()
        if drop and i % drop == 0:
            sent.append(b"")
            return
        data = chunk(b'id: %d\nevent: bench\ndata: {"t": %r, "i": %d}\n\n' % (i + 1, t, i))
        sent.append(data)
        if dup and i % dup == 0:
            data += data
        for s in list(streams):
            s.write(data)

    stats = await run_async(n, rate, send, max_seconds)
    runs[run] = {**runs[run], **stats}


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Handler, "127.0.0.1", ARGS.port, backlog=4096)
    async with server:
        await asyncio.sleep(ARGS.lifetime)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--drop-every", type=int, default=0)
    parser.add_argument("--dup-every", type=int, default=0)
    parser.add_argument("--retry-ms", type=int, default=3000)
    parser.add_argument("--cut-at", type=int, default=-1, help="close every stream before it")
    parser.add_argument("--resume-skew", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=3600, help="exit after this many s")
    ARGS = parser.parse_args()
    asyncio.run(main())

"""Self-test of the harness's HTTP chunked decoder and SSE parser (random chunk splits)."""

from __future__ import annotations

import random

from benchmarks.sse import ChunkedDecoder, SSEParser


def run() -> None:
    rnd = random.Random(1)
    body = b"".join(bytes([65 + i % 26]) * (i % 37 + 1) for i in range(200))
    enc = b""
    pos = 0
    while pos < len(body):
        k = rnd.randint(1, 100)
        part = body[pos : pos + k]
        pos += k
        enc += b"%x\r\n" % len(part) + part + b"\r\n"
    enc += b"0\r\n\r\n"
    for trial in range(200):
        d = ChunkedDecoder()
        out = b""
        p = 0
        while p < len(enc):
            k = rnd.randint(1, 20)
            out += d.feed(enc[p : p + k])
            p += k
        assert out == body and d.done, trial
    stream = (
        '\ufeffretry: 3000\r\n\r\n: ping\n\nid: 1\nevent: bench\ndata: {"i": 0}\n\n'
        "id: 2\revent: bench\rdata: a\rdata: b\r\rdata: x\r\n\r\nid: bad\x00\ndata: y\n\n"
        "event: e\n\nretry: 12x\ndata:  lead\n\ndata: é\n\n"
    ).encode()
    expected = [
        ("bench", '{"i": 0}', "1"),
        ("bench", "a\nb", "2"),
        ("message", "x", "2"),
        ("message", "y", "2"),
        ("message", " lead", "2"),
        ("message", "é", "2"),
    ]
    for trial in range(500):
        parser = SSEParser()
        got = []
        q = 0
        while q < len(stream):
            k = rnd.randint(1, 7)
            got += parser.feed(stream[q : q + k])
            q += k
        assert got == expected, (trial, got)
        assert parser.retry == 3000 and parser.comments == 1
    print("parser self-test: ok (chunked decoder 200 splits, SSE parser 500 splits)")


if __name__ == "__main__":
    run()

"""An ASGI application for ``tests/test_fastpaths.py``: a chunked body written through Daphne's
``send`` (the plain route) or through ``servers.Connection.body_send`` (Daphne's direct writes,
``fastpaths/daphne_write.py``), so that a client can compare what each puts on the wire.

``GET /chunks?route=direct|plain&count=N&size=BYTES&burst=K&sndbuf=BYTES&id=NAME`` answers
``count`` chunks of ``size`` bytes each (``chunk_bytes``), ``burst`` of them in each turn of
the event loop, waiting while the connection says its client does not keep up (as
``sink.Sink.deliver`` does), then ends the body. ``sndbuf`` shrinks the
socket's send buffer first. What happened is appended, as one JSON line per request, to the
file named by ``CHUNKS_REPORT``: ``{"id", "route", "direct", "outcomes", "paused", "error",
"sent_length"}``,
where ``outcomes`` counts each chunk's fate on the direct route (``whole``: the kernel took all
of it; ``part``: some went to Twisted's buffer; ``declined``: the plain route). A line
``{"id", "paused": true}`` is appended as soon as the connection is first paused.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import traceback
from typing import Any, cast
from urllib.parse import parse_qs

from django_sse.fastpaths import daphne_write
from django_sse.servers import connection_of


def chunk_bytes(index: int, size: int) -> bytes:
    """Chunk ``index``: ``size`` bytes that tell it apart from every other chunk."""
    stamp = b"<%d>" % index
    return (stamp * (size // len(stamp) + 1))[:size]


def report(line: dict[str, Any]) -> None:
    with open(os.environ["CHUNKS_REPORT"], "a") as out:
        out.write(json.dumps(line) + "\n")


outcomes: dict[str, int] = {}
_write_chunk = daphne_write.write_chunk


def counted_write_chunk(request: Any, connections: Any, data: bytes) -> bool:
    """``write_chunk``, counting what became of each chunk."""
    written = _write_chunk(request, connections, data)
    if not written:
        outcome = "declined"
    else:
        transport = request.channel.transport
        held = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        outcome = "part" if held else "whole"
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return written


daphne_write.write_chunk = counted_write_chunk


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    name, route = query.get("id", ""), query.get("route", "plain")
    count, size = int(query.get("count", "0")), int(query.get("size", "0"))
    burst = int(query.get("burst", "1"))
    connection = connection_of(send)
    assert connection is not None and connection.server == "daphne"
    if "sndbuf" in query:
        connection._socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(query["sndbuf"]))
    body_send = connection.body_send(send) if route == "direct" else send
    outcomes.clear()
    paused = False
    error = None
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        for index in range(count):
            writable = connection.writable()
            if writable is not None:
                if not paused:
                    paused = True
                    report({"id": name, "paused": True})
                await writable
            await body_send(
                {"type": "http.response.body", "body": chunk_bytes(index, size), "more_body": True}
            )
            # Let Twisted run between chunks, or bursts of chunks (send, drain, notice a
            # closed connection).
            if (index + 1) % burst == 0:
                await asyncio.sleep(0)
        await body_send({"type": "http.response.body", "body": b"", "more_body": False})
    except BaseException:
        error = traceback.format_exc()
        raise
    finally:
        connection.release()
        report(
            {
                "id": name,
                "route": route,
                "direct": body_send is not send,
                "outcomes": dict(outcomes),
                "paused": paused,
                "error": error,
                # What Daphne logs as the response's size: Request.write's count of body bytes.
                "sent_length": cast(Any, connection).request.sentLength,
            }
        )

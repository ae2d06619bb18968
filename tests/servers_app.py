"""An ASGI application for ``test_servers.py``: it answers what ``django_sse.servers`` makes of
the ``send`` its server gave it, as JSON.

``GET /`` answers ``{"server": ..., "backpressure": ..., "user_timeout_ms": ...}``: the
connection found (``null`` for none), and ``TCP_USER_TIMEOUT`` read back from the socket after
``set_user_timeout(2.5)``. ``GET /abort`` aborts the connection instead of answering.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from django_sse.servers import connection_of


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    connection = connection_of(send)
    if scope["path"] == "/abort" and connection is not None:
        connection.abort()
        return
    report: dict[str, Any] = {"server": None, "backpressure": None, "user_timeout_ms": None}
    if connection is not None:
        report.update(server=connection.server, backpressure=connection.backpressure)
        if connection.set_user_timeout(2.5):
            sock = connection._socket()
            report["user_timeout_ms"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        connection.release()
    body = json.dumps(report).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})

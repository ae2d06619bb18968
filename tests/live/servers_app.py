"""An ASGI application for ``test_servers.py``: it answers what ``django_sse.servers`` makes of
the ``send`` its server gave it, as JSON.

``GET /`` answers ``{"server": ..., "backpressure": ..., "user_timeout_ms": ...}``: the
connection found (``null`` for none), and ``TCP_USER_TIMEOUT`` read back from the socket after
``set_user_timeout(2.5)``. ``GET /abort`` aborts the connection instead of answering.

``example_application`` is the example project behind ``joined_cookies`` (HTTP/2 tests).
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


def joined_cookies(app: Any) -> Any:
    """``app`` with the request's ``cookie`` headers joined into one, with ``"; "``.

    Over HTTP/2 Chromium sends each cookie in a header of its own (RFC 9113 allows it), and
    Granian passes them on as they are (as the ASGI spec says); Django 5.2's ASGI handler joins
    repeated headers with commas, which breaks the ``Cookie`` header (Django ticket #36399), so
    the session is lost. This is the workaround docs/deployment.rst gives."""

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers", [])
            cookies = [value for name, value in headers if name == b"cookie"]
            if len(cookies) > 1:
                joined = b"; ".join(value.rstrip(b"; ") for value in cookies)
                rest = [(name, value) for name, value in headers if name != b"cookie"]
                scope = {**scope, "headers": [*rest, (b"cookie", joined)]}
        await app(scope, receive, send)

    return application


def __getattr__(name: str) -> Any:
    """``example_application``: the example project's application, its cookies joined (for
    HTTP/2; ``tests/test_http2.py``). Imported on first use: it sets Django up."""
    if name == "example_application":
        from example_project.asgi import application as example

        return joined_cookies(example)
    raise AttributeError(name)

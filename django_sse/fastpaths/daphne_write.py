"""Writing a body chunk on Daphne straight to the socket: Twisted's per-write cost.

Daphne writes each body chunk with twisted.web's ``Request.write``: it frames the chunk (HTTP/1.1
chunked coding), appends it to the TCP transport's buffer and registers the transport as a
writer with the reactor (on the asyncio reactor ``add_writer``, an ``epoll_ctl``); on a later
turn of the loop the transport sends its buffer and unregisters (``remove_writer``, another
``epoll_ctl``). A live event to 1,000 caught-up streams is thus 2,000 ``epoll_ctl`` calls and
1,000 callbacks a turn later, to send what the kernel would have taken at once.

``write_chunk`` does what ``Request.write`` does for one more chunk of a chunked HTTP/1.1 body
already under way, but sends the framed chunk with one non-blocking ``send`` when the transport
holds nothing: what the kernel does not take goes to the transport's own buffer
(``transport.write``), so the order of the bytes, Twisted's back-pressure (the producer is paused
when that buffer fills) and the response's end (``Request.finish`` writes the last chunk) are
as on the plain route. Anything else (HTTP/2, TLS, a UNIX socket, the response's first or last
chunk, a connection closing, bytes already waiting) is declined: the caller takes the plain
route, Daphne's own ``send`` (``handle_reply``).

What it relies on (checked on Daphne 4.2.3 with Twisted 26.10.0; none of it public API):

- Daphne's ``send`` is ``functools.partial(server.handle_reply, request)`` (``servers.py``), and
  ``handle_reply`` does nothing for a request that is no longer in ``server.connections`` or is
  marked ``disconnected`` there;
- ``twisted.web.http.Request``'s ``startedWriting``, ``chunked``, ``finished``,
  ``_disconnected``, ``sentLength`` and ``channel`` (an ``HTTPChannel`` for HTTP/1.x), and
  ``toChunk``'s framing;
- ``twisted.internet.tcp.Connection``'s ``socket``, ``connected``, ``disconnecting``,
  ``_writeDisconnected``, its two buffers (``dataBuffer`` from ``offset``, ``_tempDataLen``) and
  a ``writeSomeData`` that is a plain ``socket.send``.

``tests/test_fastpaths.py`` runs a real Daphne and checks that both routes put the same bytes on
the wire in the same order, with a partial send, a client that stops reading and a closed
connection.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Message = Mapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


def _twisted_classes() -> tuple[type, type, Callable[..., Any]] | None:
    try:
        from twisted.internet import tcp
        from twisted.web import http
    except ImportError:
        return None
    return http.HTTPChannel, tcp.Connection, tcp.Connection.writeSomeData


def can_write_directly(request: Any) -> bool:
    """Whether ``write_chunk`` may ever write for this Twisted request: HTTP/1.1 over a plain
    TCP connection whose transport writes with ``socket.send``, with the attributes it reads."""
    classes = _twisted_classes()
    if classes is None:
        return False
    channel_class, connection_class, write_some_data = classes
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    return (
        isinstance(channel, channel_class)
        and getattr(request, "clientproto", None) == b"HTTP/1.1"
        and getattr(request, "method", None) != b"HEAD"
        # Request.write replaced (HEAD, a status without a body): never a body to write.
        and "write" not in vars(request)
        and all(hasattr(request, name) for name in _REQUEST_ATTRIBUTES)
        # TLS wraps the transport (TLSMemoryBIOProtocol): no socket of its own to write to.
        and isinstance(transport, connection_class)
        and not getattr(transport, "TLS", False)
        # A UNIX socket's transport sends file descriptors too: it writes its own way.
        and getattr(type(transport), "writeSomeData", None) is write_some_data
        and isinstance(getattr(transport, "socket", None), socket.socket)
        and all(hasattr(transport, name) for name in _TRANSPORT_ATTRIBUTES)
    )


_REQUEST_ATTRIBUTES = ("startedWriting", "chunked", "finished", "_disconnected", "sentLength")
_TRANSPORT_ATTRIBUTES = (
    "connected",
    "disconnecting",
    "_writeDisconnected",
    "dataBuffer",
    "offset",
    "_tempDataLen",
)


def write_chunk(request: Any, connections: Mapping[Any, Any], data: bytes) -> bool:
    """Write ``data`` as the next chunk of ``request``'s chunked body, straight to the socket
    if the transport holds nothing, else into its buffer; False (nothing done): take the plain
    route. ``connections`` is Daphne's ``server.connections``. Only for a request that passed
    ``can_write_directly``."""
    channel = request.channel
    if (
        type(data) is not bytes
        or not data
        or not request.startedWriting
        or not request.chunked
        or request.finished
        or request._disconnected
        or channel is None
    ):
        return False
    state = connections.get(request)
    if state is None or state.get("disconnected"):
        return False
    transport = channel.transport
    if (
        not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
        or len(transport.dataBuffer) != transport.offset
        or transport._tempDataLen
    ):
        return False
    # Request.write's bookkeeping, then its framing (twisted.web.http.toChunk), in one piece.
    request.sentLength += len(data)
    framed = b"%x\r\n%s\r\n" % (len(data), data)
    try:
        sent = transport.socket.send(framed)
    except OSError:
        # Full (EAGAIN), or the connection is broken: the transport finds out on its own
        # write, as it would have on the plain route.
        sent = 0
    if sent < len(framed):
        transport.write(framed[sent:])
    return True


def direct_send(send: Send, request: Any, connections: Mapping[Any, Any]) -> Send:
    """Daphne's ``send`` for ``request``, with each body chunk that is not the last written by
    ``write_chunk``; every other message (and a chunk it declines) goes to ``send``."""

    async def send_directly(message: Message) -> None:
        if (
            message.get("more_body")
            and message["type"] == "http.response.body"
            and write_chunk(request, connections, message.get("body", b""))
        ):
            return
        await send(message)

    return send_directly

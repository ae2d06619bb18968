"""What the ASGI server under a stream lets us know about, and do with, its connection.

ASGI hands an application ``send`` and ``receive`` and nothing else: not whether the client is
reading, not the socket. A stream needs both to stay within its bounds:

- **Back-pressure.** uvicorn's ``send`` waits while the transport's buffer is over its high-water
  mark, so a client that stops reading stops the stream. Daphne's never waits: Twisted buffers
  whatever it is given, without limit. There, a Twisted push producer registered on the request
  (``IRequest.registerProducer``, public Twisted API) is told when the transport's buffer is
  full (``pauseProducing``) and when it has drained (``resumeProducing``), and the stream waits
  in between.
- **A dead peer.** A client that vanishes without a FIN or a RST is only noticed when the kernel
  gives up retransmitting, many minutes later. ``TCP_USER_TIMEOUT`` on the socket bounds how
  long sent data may stay unacknowledged (Linux).
- **Abort.** A stream that gave up on a client (it did not read for ``SEND_TIMEOUT_SECONDS``, or
  its session was revoked) drops the connection, so the server frees what it still buffers.
- **A shorter road for body chunks.** On Daphne each chunk written through ``send`` costs
  Twisted a writer registered and unregistered with the reactor; ``Connection.body_send`` gives
  a ``send`` that writes a chunk straight to the socket when nothing waits before it
  (``fastpaths/daphne_write.py``).

Finding the server's objects means reading another project's internals: each reader is one
function below, tried in turn, and answers None when the shapes it expects are not there. A
server nobody recognises gets no ``Connection``: the stream then bounds the bytes it sends per
connection instead (see ``streaming.py``). Granian is one: its ``send`` waits once it holds a
few MiB for a client, but it shows neither its socket nor a way to drop the connection, so the
byte budget is what bounds a stream there. ``tests/test_servers.py`` checks each reader against
the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django_sse.fastpaths.daphne_write import can_write_directly, direct_send

logger = logging.getLogger("django_sse")

Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class Connection:
    """The server side of one HTTP connection, as far as its server lets us see it."""

    # The server's name, for log lines and tests.
    server = "unknown"
    # Whether the stream learns when the client does not keep up (a ``send`` that waits, or a
    # pause signal): without it the stream bounds its bytes per connection instead.
    backpressure = False

    @property
    def paused(self) -> bool:
        """Whether the server holds as much as it should for this client (do not send now)."""
        return False

    def writable(self) -> asyncio.Future[None] | None:
        """A future done once the server takes data again, or None if it does now."""
        return None

    def set_user_timeout(self, seconds: float) -> bool:
        """Drop the connection when sent data stays unacknowledged for ``seconds``; False if
        the socket cannot say."""
        return _set_user_timeout(self._socket(), seconds)

    def abort(self) -> None:
        """Drop the connection now, with what the server still buffers for it."""

    def release(self) -> None:
        """The stream is over; the connection may serve other requests."""

    def body_send(self, send: Send) -> Send:
        """The ``send`` to write this connection's body chunks with: ``send`` itself, unless
        the server has a cheaper way that puts the same bytes on the wire."""
        return send

    def _socket(self) -> Any:
        return None


def _set_user_timeout(sock: Any, seconds: float) -> bool:
    option = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux only
    if sock is None or option is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))
    except (OSError, AttributeError, TypeError, ValueError):
        return False
    return True


class _DaphneConnection(Connection):
    """Daphne: a Twisted ``http.Request``; a push producer of ours learns when its transport's
    buffer is full and when it has drained."""

    server = "daphne"
    backpressure = True

    def __init__(self, request: Any, connections: Any = None) -> None:
        self.request = request
        # Daphne's ``server.connections`` (what its ``send`` checks first), if it has one.
        self.connections = connections
        self._paused = False
        self._stopped = False
        self._waiter: asyncio.Future[None] | None = None
        self._registered = False
        try:
            request.registerProducer(self, True)
        except Exception as exc:  # another producer (not Daphne's doing), or a closed channel
            logger.debug("Could not register a producer on Daphne's request: %r", exc)
            self.backpressure = False
        else:
            self._registered = True

    # IPushProducer, called by Twisted on the event loop's thread.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._stopped = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def paused(self) -> bool:
        return self._paused and not self._stopped

    def writable(self) -> asyncio.Future[None] | None:
        if not self.paused:
            return None
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def _transport(self) -> Any:
        return getattr(self.request, "transport", None)

    def _socket(self) -> Any:
        transport = self._transport()
        get_handle = getattr(transport, "getHandle", None)
        return get_handle() if get_handle is not None else None

    def abort(self) -> None:
        transport = self._transport()
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            with contextlib.suppress(Exception):
                abort()
        self.stopProducing()

    def body_send(self, send: Send) -> Send:
        if not isinstance(self.connections, dict) or not can_write_directly(self.request):
            return send
        return direct_send(send, self.request, self.connections)

    def release(self) -> None:
        if self._registered:
            self._registered = False
            with contextlib.suppress(Exception):
                self.request.unregisterProducer()
        self._wake()


class _AsyncioConnection(Connection):
    """An asyncio (or uvloop) transport (uvicorn): its ``send`` waits while the transport is
    over its high-water mark."""

    def __init__(self, transport: Any, server: str, backpressure: bool) -> None:
        self.transport = transport
        self.server = server
        self.backpressure = backpressure

    def _socket(self) -> Any:
        return self.transport.get_extra_info("socket")

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.transport.abort()


def _daphne(send: Callable[..., Any]) -> Connection | None:
    """Daphne passes ``functools.partial(server.handle_reply, protocol)`` as ``send``; the
    protocol is the Twisted request of the connection."""
    if not isinstance(send, functools.partial) or len(send.args) != 1:
        return None
    owner = getattr(send.func, "__self__", None)
    if not type(owner).__module__.startswith("daphne.") or send.func.__name__ != "handle_reply":
        return None
    request = send.args[0]
    if not hasattr(request, "registerProducer") or getattr(request, "transport", None) is None:
        return None
    return _DaphneConnection(request, getattr(owner, "connections", None))


def _uvicorn(send: Callable[..., Any]) -> Connection | None:
    """uvicorn passes the bound ``send`` of its request cycle, which holds the transport."""
    owner = getattr(send, "__self__", None)
    if owner is None or not type(owner).__module__.startswith("uvicorn."):
        return None
    transport = getattr(owner, "transport", None)
    if not _is_transport(transport):
        return None
    return _AsyncioConnection(transport, "uvicorn", backpressure=True)


def _is_transport(transport: Any) -> bool:
    """An asyncio write transport, or one of uvloop's (``uvicorn[standard]`` runs on uvloop,
    whose transports implement the interface without subclassing asyncio's classes)."""
    if isinstance(transport, asyncio.WriteTransport):
        return True
    return all(callable(getattr(transport, name, None)) for name in _TRANSPORT_METHODS)


_TRANSPORT_METHODS = ("write", "abort", "get_extra_info", "is_closing")


_READERS: tuple[Callable[[Callable[..., Any]], Connection | None], ...] = (_daphne, _uvicorn)


def connection_of(send: Callable[..., Any]) -> Connection | None:
    """The connection behind the server's ``send``, or None for a server we do not know."""
    for reader in _READERS:
        try:
            found = reader(send)
        except Exception:  # a server of another version: a shape we did not expect
            logger.debug("%s failed on %r", reader.__name__, send, exc_info=True)
            continue
        if found is not None:
            return found
    return None

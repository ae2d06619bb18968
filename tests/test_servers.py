"""``django_sse.servers`` against the real servers: what it reads from each one's ``send``.

These readers lean on other projects' internals (a Daphne ``send`` is a ``functools.partial``
of its server's ``handle_reply``; uvicorn's is the bound ``send`` of a request cycle that holds
the transport), so a new version of either could break them: these tests say so at once. Each
server is started as ``tests.processes.server_command`` starts it for every live test: uvicorn
on uvloop and httptools (``uvicorn[standard]``), whose transport is not an asyncio class;
Granian, whose connection the app cannot see (a server it does not know).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from django_sse.servers import connection_of
from tests.processes import (
    ROOT,
    SERVER_KINDS,
    child_env,
    free_port,
    server_command,
    stop_process,
    wait_listening,
)

pytestmark = pytest.mark.e2e

APPLICATION = "tests.servers_app:application"
# The servers whose connection django_sse reads (the others get a byte budget per connection).
KNOWN = {"daphne", "uvicorn"}


@pytest.fixture(params=SERVER_KINDS, scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    name = str(request.param)
    port = free_port()
    log = Path(tmp_path_factory.mktemp("servers")) / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            server_command(name, port, APPLICATION),
            cwd=ROOT,
            env=child_env(),
            stdout=out,
            stderr=out,
        )
    try:
        wait_listening(process, port, log.read_text, name=name)
        yield name, port
    finally:
        stop_process(process)


def test_the_connection_of_each_known_server_is_found_and_bounded(
    server: tuple[str, int],
) -> None:
    name, port = server
    report = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).json()
    if name not in KNOWN:
        # Granian: no connection, so each stream gets a byte budget (streaming.py).
        assert report == {"server": None, "backpressure": None, "user_timeout_ms": None}
        return
    assert report["server"] == name
    assert report["backpressure"] is True
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert report["user_timeout_ms"] == 2500


def test_an_aborted_connection_is_dropped(server: tuple[str, int]) -> None:
    name, port = server
    if name not in KNOWN:
        # Nothing to drop it with: the request is answered (the stream's byte budget and
        # send timeout are what end a stream there).
        assert httpx.get(f"http://127.0.0.1:{port}/abort", timeout=10).json()["server"] is None
        return
    # A reset (or a connection closed with no answer): either way no response.
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(f"http://127.0.0.1:{port}/abort", timeout=10)


def test_a_server_nobody_recognises_has_no_connection() -> None:
    async def send(message: object) -> None:
        pass

    class Other:
        async def send(self, message: object) -> None:
            pass

    assert connection_of(send) is None
    assert connection_of(Other().send) is None
    assert connection_of(asyncio.sleep) is None

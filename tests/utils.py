"""Helpers to drive the stream view through ASGI, to publish from a test and to make sessions
(shared by the in-process test modules; the live-server ones are in ``tests/live/``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.core.asgi import get_asgi_application

from django_sse import publish
from django_sse.asgi import DirectWriteMiddleware
from django_sse.auth import authorizations
from django_sse.database import run_in_db_thread
from django_sse.direct import DirectWriter
from django_sse.hub import Hub, get_hub
from django_sse.inbox import Inbox
from django_sse.models import Job, JobEvent
from tests.sse_parser import Event, Parser

# Streams go through DirectWriteMiddleware, as the docs recommend; ``app=plain_application``
# leaves it out.
plain_application = get_asgi_application()
application = DirectWriteMiddleware(plain_application)


def make_session(user: Any = None) -> str:
    """A saved session (logged in as ``user`` if given); returns its key."""
    session = SessionStore()
    if user is not None:
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    else:
        session["visited"] = True
    session.save()
    assert session.session_key is not None
    return session.session_key


class StreamClient:
    """One HTTP request to the ASGI app, read chunk by chunk."""

    def __init__(
        self,
        url: str,
        *,
        session_key: str | None = None,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        app: Any = None,
        path: str | None = None,
    ) -> None:
        """``path``: the scope's (percent-decoded) path as a server would give it, when it
        holds what ``urlsplit`` would drop (a line break)."""
        parts = urlsplit(url)
        raw_headers = [(b"host", b"testserver"), (b"accept", b"text/event-stream")]
        raw_headers.append((b"accept-encoding", b"gzip, deflate"))
        if session_key is not None:
            cookie = f"{settings.SESSION_COOKIE_NAME}={session_key}"
            raw_headers.append((b"cookie", cookie.encode()))
        for name, value in (headers or {}).items():
            # Raw bytes, as a client may send them (Django decodes header values as latin-1).
            raw_headers.append((name.lower().encode("latin1"), value.encode("utf-8")))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": parts.path if path is None else path,
            "raw_path": parts.path.encode(),
            "query_string": parts.query.encode(),
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.communicator = ApplicationCommunicator(app or application, scope)
        self.parser = Parser()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.ended = False

    async def start(self, timeout: float = 10) -> int:
        await self.communicator.send_input({"type": "http.request", "body": b""})
        message = await self.communicator.receive_output(timeout)
        assert message["type"] == "http.response.start", message
        self.status = message["status"]
        self.headers = {
            k.decode("latin1").lower(): v.decode("latin1") for k, v in message["headers"]
        }
        return message["status"]

    async def read_chunk(self, timeout: float = 10) -> bytes:
        """The next body chunk (b"" once the body has ended)."""
        if self.ended:
            return b""
        message = await self.communicator.receive_output(timeout)
        assert message["type"] == "http.response.body", message
        chunk: bytes = message.get("body", b"")
        self.body += chunk
        self.parser.feed(chunk)
        if not message.get("more_body", False):
            self.ended = True
        return chunk

    async def read_events(self, count: int, timeout: float = 10) -> list[Event]:
        """Read until ``count`` events in all have arrived; returns all events so far."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.parser.events) < count:
            if self.ended:
                raise AssertionError(f"stream ended after {len(self.parser.events)} events")
            await self.read_chunk(max(0.01, deadline - loop.time()))
        return self.parser.events

    async def read_to_end(self, timeout: float = 10) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ended:
            await self.read_chunk(max(0.01, deadline - loop.time()))
        return self.body

    async def nothing_within(self, seconds: float) -> bool:
        """True if the app sends nothing for ``seconds`` (the app keeps running)."""
        return await self.communicator.receive_nothing(timeout=seconds, interval=0.01)

    async def disconnect(self, timeout: float = 5) -> None:
        await self.communicator.send_input({"type": "http.disconnect"})
        await self.communicator.wait(timeout)

    @property
    def seqs(self) -> list[int]:
        return [int(e.last_event_id) for e in self.parser.events]


# -- the stream view of one job --------------------------------------------------------------


def url(job_id: object, query: str = "") -> str:
    return f"/sse/jobs/{job_id}/events/" + (f"?{query}" if query else "")


async def open_stream(job_id: object, key: str | None, **kwargs: Any) -> StreamClient:
    client = StreamClient(url(job_id, kwargs.pop("query", "")), session_key=key, **kwargs)
    await client.start()
    return client


async def apublish_in_thread(job: Job | Any, event: str, data: Any = None) -> JobEvent:
    return await sync_to_async(publish)(job, event, data)


def message(job: Job, seq: int, event: str = "step") -> dict[str, Any]:
    """A channel-layer message announcing event ``seq`` of ``job``, as ``publish`` sends it."""
    return {"type": "django_sse.event", "job": job.pk.hex, "seq": seq, "event": event, "data": "1"}


async def subscribe(hub: Hub, job: Job) -> Inbox:
    """A new inbox, subscribed to the job's events."""
    inbox = Inbox()
    await hub.subscribe(job.pk, inbox)
    return inbox


# -- streams opening together (a storm of reconnections) -------------------------------------


@contextlib.asynccontextmanager
async def db_thread_held() -> AsyncIterator[None]:
    """The stream database thread busy with a call of its own until the block ends, so that
    the calls made inside wait there together (and are served as one batch)."""
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        assert release.wait(10)

    holding = asyncio.ensure_future(run_in_db_thread(hold))
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, busy.wait, 5)
        yield
    finally:
        release.set()
        await holding


async def open_together(asks: list[tuple[Any, str]]) -> list[StreamClient]:
    """Start one stream per ``(job_id, session_key)`` while the one database thread is busy,
    so that their authorizations wait together; then let it go. Returns the started clients."""
    loop = asyncio.get_running_loop()
    async with db_thread_held():
        clients = [StreamClient(url(job_id), session_key=key) for job_id, key in asks]
        starting = [asyncio.ensure_future(client.start()) for client in clients]
        deadline = loop.time() + 10
        while authorizations.waiting < len(asks):
            assert loop.time() < deadline, authorizations.waiting
            await asyncio.sleep(0.01)
    await asyncio.gather(*starting)
    return clients


async def stop_all(clients: list[StreamClient]) -> None:
    """Disconnect the clients whose stream started."""
    for client in clients:
        if client.status == 200:
            await client.disconnect()


async def writing(job_id: Any, count: int = 1) -> list[DirectWriter]:
    """Wait until ``count`` streams of the job wait with their direct writer active."""
    hub = get_hub()
    for _ in range(300):
        feed = hub.feeds.get(job_id)
        if feed is not None:
            writers = [s for s in feed.subscribers if isinstance(s, DirectWriter)]
            active = [w for w in writers if w.active]
            if len(active) >= count:
                return active
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} never had {count} active direct writer(s)")

"""Direct writes of live events (``DirectWriteMiddleware`` and ``direct.py``)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import markcoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished
from django.http import HttpRequest, StreamingHttpResponse
from django.test import override_settings

from django_sse.asgi import DirectWriteMiddleware
from django_sse.detach import serve as serve_detached
from django_sse.direct import DirectWriter
from django_sse.ending import CloseReason, Guard, StreamClosed
from django_sse.feed import Subscriber
from django_sse.hub import get_hub
from django_sse.inbox import EncodedEvent, Inbox
from django_sse.models import Job
from django_sse.replay import StoredEvent
from django_sse.servers import Connection
from django_sse.sink import Message, Sink
from django_sse.stream import JobStream
from django_sse.wakeup import Wakeup
from tests.utils import (
    StreamClient,
    apublish_in_thread,
    message,
    open_stream,
    plain_application,
    subscribe,
    url,
    writing,
)

NO_POLL = {"POLL_SECONDS": 60}


def waiting(subscriber: Subscriber) -> bool:
    """Whether the stream of an inbox or a direct writer waits for live events."""
    assert isinstance(subscriber, Inbox | DirectWriter)
    return subscriber.wakeup.waiting


async def waiting_live(job_id: Any) -> None:
    """Wait until a stream of the job has caught up and waits for live events (so that an
    event published now reaches it live, not through its replay)."""
    hub = get_hub()
    for _ in range(500):
        feed = hub.feeds.get(job_id)
        if feed is not None and any(waiting(s) for s in feed.subscribers):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no stream of job {job_id} ever waited for live events")


@pytest.fixture
def live_chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The seq of every live event that went through the stream's own task."""
    calls: list[int] = []
    original = JobStream.encode_live

    async def counting(self: JobStream, deliveries: list[Any]) -> bytes:
        calls.extend(delivery.event.seq for delivery in deliveries)
        return await original(self, deliveries)

    monkeypatch.setattr(JobStream, "encode_live", counting)
    return calls


# -- through the view ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_caught_up_stream_gets_live_events_without_its_task(
    hub_cleanup: None, job: Job, owner_key: str, live_chunks: list[int]
) -> None:
    await apublish_in_thread(job, "step", {"n": 0})
    client = await open_stream(job.pk, owner_key)
    await client.read_events(1)
    await writing(job.pk)
    for n in range(1, 6):
        await apublish_in_thread(job, "step", {"n": n})
    events = await client.read_events(6)
    assert [(e.last_event_id, json.loads(e.data)["n"]) for e in events] == [
        (str(n + 1), n) for n in range(6)
    ]
    assert live_chunks == []
    await client.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_without_the_middleware_live_events_go_through_django(
    hub_cleanup: None, job: Job, owner_key: str, live_chunks: list[int]
) -> None:
    client = StreamClient(url(job.pk), session_key=owner_key, app=plain_application)
    await client.start()
    await client.read_chunk()
    await waiting_live(job.pk)
    feed = get_hub().feeds[job.pk]
    assert [type(s) for s in feed.subscribers] == [Inbox]
    for n in range(3):
        await apublish_in_thread(job, "step", {"n": n})
    assert [e.last_event_id for e in await client.read_events(3)] == ["1", "2", "3"]
    assert live_chunks == [1, 2, 3]
    await client.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@override_settings(DJANGO_SSE={**NO_POLL, "HEARTBEAT_SECONDS": 0.3})
async def test_heartbeat_and_end_come_after_the_direct_writes(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()
    await writing(job.pk)
    await apublish_in_thread(job, "step", {"n": 1})
    await client.read_events(1)
    assert await client.read_chunk(timeout=2) == b": ping\n\n"
    # After the heartbeat (sent by the stream's task) the writer is active again.
    await writing(job.pk)
    await apublish_in_thread(job, "step", {"n": 2})
    await sync_to_async(job.succeed)({"rows": 2})
    await client.read_to_end()
    assert [e.type for e in client.parser.events] == ["step", "step", "succeeded"]
    assert client.seqs == [1, 2, 3]
    assert json.loads(client.parser.events[-1].data) == {"result": {"rows": 2}}


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_gap_hands_over_to_the_stream_which_reads_the_database(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()
    (writer,) = await writing(job.pk)
    # The writer only writes the event after its last one: anything else is the stream's job.
    now = asyncio.get_running_loop().time()
    assert writer.write(5, b"id: 5\n\n", False, now) is False
    assert writer.active is False
    await apublish_in_thread(job, "step", {"n": 1})
    await client.read_events(1)
    assert client.seqs == [1]
    await client.disconnect()


Transform = Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]


def body_middleware(transform: Transform) -> Any:
    """A Django middleware factory whose middleware passes streaming bodies through
    ``transform``."""

    def factory(get_response: Any) -> Any:
        async def middleware(request: HttpRequest) -> Any:
            response = await get_response(request)
            if isinstance(response, StreamingHttpResponse):
                response.streaming_content = transform(response.streaming_content)  # type: ignore[arg-type]
            return response

        return markcoroutinefunction(middleware)

    factory.async_capable = True  # type: ignore[attr-defined]
    factory.sync_capable = False  # type: ignore[attr-defined]
    return factory


async def rewritten(content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Each chunk changed (as a compressing middleware would)."""
    async for part in content:
        yield b": rewritten\n" + part


async def one_chunk_late(content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Each chunk unchanged, but one chunk late (a look-ahead)."""
    held = None
    async for part in content:
        if held is not None:
            yield held
        held = part
    if held is not None:
        yield held


rewriting_middleware = body_middleware(rewritten)
lagging_middleware = body_middleware(one_chunk_late)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_middleware_rewriting_the_body_keeps_streams_on_djangos_path(
    hub_cleanup: None,
    job: Job,
    owner_key: str,
    live_chunks: list[int],
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_direct.rewriting_middleware"]
    settings.DJANGO_SSE = NO_POLL
    caplog.set_level(logging.WARNING, logger="django_sse")
    monkeypatch.setattr(Sink, "rewrite_logged", False)  # logged once per process
    # A handler of its own: middleware is loaded when the handler is made.
    app = DirectWriteMiddleware(ASGIHandler())
    client = StreamClient(url(job.pk), session_key=owner_key, app=app)
    await client.start()
    await client.read_chunk()
    await waiting_live(job.pk)
    for n in range(2):
        # One at a time: each is a chunk of its own.
        await apublish_in_thread(job, "step", {"n": n})
        await client.read_events(n + 1)
    assert client.seqs == [1, 2]
    assert client.body.count(b": rewritten\n") == 3  # the retry line and each live chunk
    assert live_chunks == [1, 2]
    assert "A middleware rewrites the body of event streams" in caplog.text
    await client.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_a_failed_direct_write_ends_the_stream(
    hub_cleanup: None, job: Job, owner_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_sse")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def failing_send(message: Message) -> None:
            if b"id: 1\n" in message.get("body", b""):
                raise OSError("connection reset")
            await send(message)

        await DirectWriteMiddleware(plain_application)(scope, receive, failing_send)

    client = StreamClient(url(job.pk), session_key=owner_key, app=app)
    await client.start()
    await client.read_chunk()
    await writing(job.pk)
    await apublish_in_thread(job, "step", {"n": 1})
    await client.read_to_end()
    assert client.parser.events == []
    assert "reason=write failed (OSError)" in caplog.text
    await until(lambda: job.pk not in get_hub().feeds)


@pytest.fixture
def finished_requests() -> Iterator[list[object]]:
    """Django's ``request_finished`` signals, as they are sent."""
    finished: list[object] = []

    def on_finished(sender: object, **kwargs: Any) -> None:
        finished.append(sender)

    request_finished.connect(on_finished)
    yield finished
    request_finished.disconnect(on_finished)


async def until(condition: Callable[[], bool], timeout: float = 2) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_caught_up_stream_leaves_djangos_handler_which_finishes_the_request(
    hub_cleanup: None,
    job: Job,
    owner_key: str,
    caplog: pytest.LogCaptureFixture,
    finished_requests: list[object],
) -> None:
    caplog.set_level(logging.INFO, logger="django_sse")
    client = await open_stream(job.pk, owner_key)
    await client.read_chunk()
    await writing(job.pk)
    # Django is done with the request (and frees what it held for it) ...
    await until(lambda: len(finished_requests) == 1)
    # ... while the stream goes on: live events, then the end when the client leaves.
    await apublish_in_thread(job, "step", {"n": 1})
    assert [e.last_event_id for e in await client.read_events(1)] == ["1"]
    assert "Stream closed" not in caplog.text
    await client.disconnect()
    assert "reason=client went away" in caplog.text
    assert job.pk not in get_hub().feeds


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@override_settings(DJANGO_SSE=NO_POLL)
async def test_the_all_jobs_stream_leaves_djangos_handler_too(
    hub_cleanup: None,
    job: Job,
    owner_key: str,
    caplog: pytest.LogCaptureFixture,
    finished_requests: list[object],
) -> None:
    caplog.set_level(logging.INFO, logger="django_sse")
    client = StreamClient("/sse/events/", session_key=owner_key)
    await client.start()
    await client.read_chunk()
    await until(lambda: len(finished_requests) == 1)
    await until(lambda: job.pk in get_hub().feeds)
    await apublish_in_thread(job, "step", {"n": 1})
    (event,) = await client.read_events(1)
    assert json.loads(event.data)["seq"] == 1
    await client.disconnect()
    assert "Session stream closed" in caplog.text
    assert job.pk not in get_hub().feeds


@pytest.mark.asyncio
async def test_a_client_gone_before_the_takeover_ends_the_body_at_once() -> None:
    closed: list[str] = []

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            while True:
                yield b": x\n\n"
                await asyncio.sleep(3600)
        finally:
            closed.append("closed")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await asyncio.sleep(3600)
        return {}

    sink = Sink(send, receive)
    sink.disconnected = True  # Django's handler read the http.disconnect
    sink.detached = body()
    await asyncio.wait_for(serve_detached(sink), 2)
    assert closed == ["closed"]
    assert all(m.get("more_body", False) for m in sent)  # no end: there is nobody to tell


@pytest.mark.asyncio
async def test_the_takeover_ends_when_the_client_leaves() -> None:
    closed: list[str] = []
    left = asyncio.Event()

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield b": x\n\n"
            await asyncio.sleep(3600)
        finally:
            closed.append("closed")

    async def send(message: Message) -> None:
        pass

    async def receive() -> Message:
        await left.wait()
        return {"type": "http.disconnect"}

    sink = Sink(send, receive)
    sink.detached = body()

    async def serve_then_report() -> int:
        await serve_detached(sink)
        # The cancellation that stopped the body was the middleware's own: taken back.
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling() if hasattr(task, "cancelling") else 0

    serving = asyncio.ensure_future(serve_then_report())
    await asyncio.sleep(0.05)
    assert not serving.done()
    left.set()
    assert await asyncio.wait_for(serving, 2) == 0
    assert closed == ["closed"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_chunks_a_middleware_still_holds_at_the_takeover_are_sent(
    hub_cleanup: None, job: Job, owner_key: str, settings: Any
) -> None:
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_direct.lagging_middleware"]
    settings.DJANGO_SSE = NO_POLL
    for n in range(2):
        await apublish_in_thread(job, "step", {"n": n})
    client = StreamClient(
        url(job.pk), session_key=owner_key, app=DirectWriteMiddleware(ASGIHandler())
    )
    await client.start()
    await client.read_chunk()
    await writing(job.pk)
    await apublish_in_thread(job, "step", {"n": 2})
    await client.read_events(3)
    assert client.seqs == [1, 2, 3]
    await client.disconnect()


@pytest.mark.asyncio
async def test_a_send_failing_during_the_takeover_ends_the_stream_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield b": x\n\n"
            yield b": never sent\n\n"
        finally:
            closed.append("closed")

    async def send(message: Message) -> None:
        raise OSError("connection reset")

    async def receive() -> Message:
        await asyncio.sleep(3600)
        return {}

    sink = Sink(send, receive)
    sink.detached = body()
    await asyncio.wait_for(serve_detached(sink), 2)
    assert closed == ["closed"]
    assert "Sending a stream failed (OSError('connection reset')); ending it." in caplog.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_writer_raising_in_the_dispatch_ends_only_its_stream(
    hub_cleanup: None, job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenWriter(DirectWriter):
        __slots__ = ()

        def write(self, seq: int, chunk: bytes, terminal: bool, now: float, count: int = 1) -> bool:
            raise RuntimeError("a bug")

    hub = get_hub()
    good, bad = await subscribe(hub, job), await subscribe(hub, job)
    guard = Guard(allowed)
    guard.start()
    writer = BrokenWriter(Sink(SlowSend(), never_receive), bad, guard)
    hub.replace(job.pk, bad, writer)
    writer.active = True
    hub.on_message(message(job, 1))
    assert [d.event.seq for d in good.items or ()] == [1]
    assert isinstance(writer.error, RuntimeError) and bad.wakeup.is_set()
    assert hub.feeds[job.pk].seq == 1
    assert "Writing event 1 to a stream failed." in caplog.text


# -- the writer ------------------------------------------------------------------------------


class SlowSend:
    """An ASGI send whose writes wait for ``release`` while ``blocked``."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.blocked = False
        self.release = Wakeup()
        self.fail: Exception | None = None

    async def __call__(self, message: Message) -> None:
        if self.fail is not None:
            raise self.fail
        if self.blocked:
            await self.release.wait()
            if self.fail is not None:
                raise self.fail
        self.bodies.append(message["body"])


async def never_receive() -> Message:
    await asyncio.sleep(3600)
    return {}


async def allowed() -> bool:
    return True


def make_writer(send: Any, wakeup: Wakeup | None = None) -> DirectWriter:
    guard = Guard(allowed)
    guard.start()
    return DirectWriter(Sink(send, never_receive), Inbox(wakeup), guard)


def in_flight(writer: DirectWriter) -> bool:
    return writer.inflight is not None


def chunk(seq: int) -> bytes:
    return f"id: {seq}\ndata: {seq}\n\n".encode()


def write(writer: DirectWriter, seq: int, terminal: bool = False) -> bool:
    return writer.write(seq, chunk(seq), terminal, asyncio.get_running_loop().time())


@pytest.mark.asyncio
async def test_writes_in_order_and_skips_what_was_sent() -> None:
    send = SlowSend()
    writer = make_writer(send)
    writer.last_seq = 2
    writer.active = True
    assert write(writer, 2) is True  # already sent: skipped
    assert write(writer, 3) is True
    assert write(writer, 4) is True
    assert send.bodies == [chunk(3), chunk(4)]  # written at once, no task
    assert writer.inflight is None
    assert (writer.last_seq, writer.sent, writer.bytes) == (4, 2, len(chunk(3) + chunk(4)))


def encoded(*seqs: int, terminal: bool = False) -> list[EncodedEvent]:
    return [
        EncodedEvent(StoredEvent(seq, "step", str(seq)), chunk(seq), terminal and seq == seqs[-1])
        for seq in seqs
    ]


@pytest.mark.asyncio
async def test_a_batch_is_one_write_without_what_was_sent() -> None:
    send = SlowSend()
    writer = make_writer(send)
    writer.last_seq = 2
    writer.active = True
    now = asyncio.get_running_loop().time()
    writer.deliver_many(encoded(1, 2, 3, 4, 5), now)
    assert send.bodies == [chunk(3) + chunk(4) + chunk(5)]
    assert (writer.last_seq, writer.sent, writer.active) == (5, 3, True)
    writer.deliver_many(encoded(4, 5), now)  # all sent: nothing written, nothing queued
    writer.deliver_many(encoded(6, 7, terminal=True), now)
    assert send.bodies[1:] == [chunk(6) + chunk(7)]
    assert writer.finished and not writer.active
    assert writer.inbox.take() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("case", ["hole", "over-allowance", "not-next"])
async def test_a_batch_that_may_not_go_whole_goes_to_the_stream_whole(case: str) -> None:
    send = SlowSend()
    wakeup = Wakeup()
    writer = make_writer(send, wakeup)
    writer.active = True
    seqs = {"hole": (1, 2, 4), "over-allowance": (1, 2, 3), "not-next": (2, 3)}[case]
    if case == "over-allowance":
        writer.allowance = len(chunk(1) + chunk(2))
    writer.deliver_many(encoded(*seqs), asyncio.get_running_loop().time())
    assert send.bodies == []  # nothing half-written: the stream's task decides
    assert [item.event.seq for item in writer.inbox.take()] == list(seqs)
    assert not writer.active and wakeup.is_set()
    assert (writer.last_seq, writer.sent) == (0, 0)


@pytest.mark.asyncio
async def test_a_batch_larger_than_an_inbox_goes_one_event_at_a_time() -> None:
    # One chunk for the whole batch would put all of it in the server's buffer of a client that
    # may have stopped reading: past an inbox's budget each event waits for the server instead.
    send = SlowSend()
    wakeup = Wakeup()
    writer = make_writer(send, wakeup)
    writer.active = True
    send.blocked = True
    items = encoded(1, 2, 3)
    with override_settings(DJANGO_SSE={"MAX_BUFFERED_BYTES": 4 * len(chunk(1) + chunk(2))}):
        writer.deliver_many(items, asyncio.get_running_loop().time())
    assert writer.last_seq == 1 and in_flight(writer)  # the first one, held by the server
    assert [item.event.seq for item in writer.inbox.take()] == [2, 3]
    assert not writer.active and wakeup.is_set()
    send.release.set()
    await writer.settle()
    assert send.bodies == [chunk(1)]


@pytest.mark.asyncio
async def test_a_blocked_write_hands_the_next_event_to_the_stream() -> None:
    send = SlowSend()
    wakeup = Wakeup()
    writer = make_writer(send, wakeup)
    writer.active = True
    send.blocked = True
    assert write(writer, 1) is True
    assert writer.inflight is not None
    # The stream's task takes over at once: its wait for the write is bounded from now on.
    assert not writer.active and wakeup.is_set()
    # Nothing piles up behind a write in flight (the inbox is bounded, and the stream reads
    # from the database what it dropped).
    writer.active = True
    assert write(writer, 2) is False
    assert writer.last_seq == 1
    send.blocked = False
    send.release.set()
    await writer.settle()
    assert send.bodies == [chunk(1)]
    assert writer.error is None
    assert in_flight(writer) is False


@pytest.mark.asyncio
@override_settings(DJANGO_SSE={"SEND_TIMEOUT_SECONDS": 0.1})
async def test_a_write_the_client_never_takes_ends_the_stream() -> None:
    send = SlowSend()
    writer = make_writer(send)
    writer.active = True
    send.blocked = True
    write(writer, 1)
    inflight = writer.inflight
    assert inflight is not None
    with pytest.raises(StreamClosed) as closed:
        await writer.settle()
    assert closed.value.reason is CloseReason.SEND_TIMEOUT
    assert writer.sink.ended is CloseReason.SEND_TIMEOUT
    with pytest.raises(asyncio.CancelledError):
        await inflight
    assert send.bodies == []


@pytest.mark.asyncio
async def test_a_write_waiting_past_the_authorization_deadline_checks_the_session() -> None:
    checks: list[str] = []

    async def revoked() -> bool:
        checks.append("checked")
        return False

    send = SlowSend()
    writer = make_writer(send)
    writer.guard = Guard(revoked)
    writer.guard.until = asyncio.get_running_loop().time() + 0.05
    writer.sink.guard = writer.guard
    writer.active = True
    send.blocked = True
    write(writer, 1)
    with pytest.raises(StreamClosed) as closed:
        await asyncio.wait_for(writer.settle(), 5)
    assert closed.value.reason is CloseReason.REVOKED and checks == ["checked"]


@pytest.mark.asyncio
async def test_no_direct_write_once_the_authorization_is_stale() -> None:
    wakeup = Wakeup()
    send = SlowSend()
    writer = make_writer(send, wakeup)
    writer.active = True
    writer.guard.until = asyncio.get_running_loop().time() - 0.001
    assert write(writer, 1) is False
    assert send.bodies == [] and wakeup.is_set() and not writer.active


@pytest.mark.asyncio
async def test_no_direct_write_past_the_byte_allowance() -> None:
    send = SlowSend()
    writer = make_writer(send)
    writer.active = True
    writer.allowance = len(chunk(1)) + 1
    assert write(writer, 1) is True
    assert write(writer, 2) is False
    assert send.bodies == [chunk(1)]


@pytest.mark.asyncio
async def test_no_direct_write_while_the_server_holds_enough() -> None:
    class Paused(Connection):
        paused = True

    send = SlowSend()
    writer = make_writer(send)
    writer.sink.connection = Paused()
    writer.active = True
    assert write(writer, 1) is False
    assert send.bodies == []


@pytest.mark.asyncio
async def test_a_gap_hands_over() -> None:
    writer = make_writer(SlowSend())
    writer.active = True
    assert write(writer, 2) is False
    assert writer.active is False
    assert writer.last_seq == 0


@pytest.mark.asyncio
async def test_a_terminal_event_wakes_the_stream() -> None:
    wakeup = Wakeup()
    writer = make_writer(SlowSend(), wakeup)
    writer.active = True
    write(writer, 1, terminal=True)
    assert writer.finished and not writer.active and wakeup.is_set()


@pytest.mark.asyncio
async def test_a_failing_write_wakes_the_stream_with_the_error() -> None:
    send = SlowSend()
    send.fail = OSError("gone")
    wakeup = Wakeup()
    writer = make_writer(send, wakeup)
    writer.active = True
    write(writer, 1)
    assert isinstance(writer.error, OSError)
    assert not writer.active and wakeup.is_set()


@pytest.mark.asyncio
async def test_a_write_failing_after_blocking_wakes_the_stream() -> None:
    send = SlowSend()
    wakeup = Wakeup()
    writer = make_writer(send, wakeup)
    writer.active = True
    send.blocked = True
    write(writer, 1)
    send.fail = OSError("gone")
    send.blocked = False
    send.release.set()
    await writer.settle()
    assert isinstance(writer.error, OSError) and wakeup.is_set()
    assert writer.inflight is None


@pytest.mark.asyncio
async def test_a_send_returning_another_awaitable_is_awaited() -> None:
    """ASGI promises an awaitable, not a coroutine (some servers return their own)."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[None]] = []
    bodies: list[bytes] = []

    def send(message: Message) -> asyncio.Future[None]:
        bodies.append(message["body"])
        futures.append(loop.create_future())
        return futures[-1]

    wakeup = Wakeup()
    writer = make_writer(send, wakeup)
    writer.active = True
    write(writer, 1)
    assert write(writer, 2) is False  # waits for the first write: the stream's task takes it
    assert bodies == [chunk(1)]
    futures[0].set_result(None)
    await writer.settle()
    assert writer.error is None and writer.inflight is None


@pytest.mark.asyncio
async def test_a_send_raising_when_called_ends_only_that_stream() -> None:
    def send(message: Message) -> Any:
        raise RuntimeError("protocol error")

    wakeup = Wakeup()
    writer = make_writer(send, wakeup)
    writer.active = True
    assert write(writer, 1) is True
    assert isinstance(writer.error, RuntimeError)
    assert not writer.active and wakeup.is_set()


@pytest.mark.asyncio
async def test_cancel_stops_a_blocked_write() -> None:
    send = SlowSend()
    writer = make_writer(send)
    writer.active = True
    send.blocked = True
    write(writer, 1)
    inflight = writer.inflight
    assert inflight is not None
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inflight
    assert send.bodies == []
    assert writer.inflight is None


# -- the sink's bounded sends ----------------------------------------------------------------

TRACE: contextvars.ContextVar[str] = contextvars.ContextVar("trace", default="")


@pytest.mark.asyncio
async def test_a_send_held_back_is_awaited_in_the_streams_own_context() -> None:
    """An ASGI middleware around ours may set a context variable around ``send`` and reset it
    afterwards (OpenTelemetry's does): that only works in one context."""

    async def tracing_send(message: Message) -> None:
        token = TRACE.set("span")
        await asyncio.sleep(0.01)  # the server holds the write back for a moment
        TRACE.reset(token)  # ValueError if the send went on in another context

    guard = Guard(allowed)
    guard.start()
    sink = Sink(tracing_send, never_receive)
    sink.guard = guard
    await sink.deliver({"type": "http.response.body", "body": b"x", "more_body": True})
    assert sink.ended is None


@pytest.mark.asyncio
@override_settings(DJANGO_SSE={"SEND_TIMEOUT_SECONDS": 0.1})
async def test_a_send_to_an_unknown_server_that_never_returns_is_given_up() -> None:
    never = asyncio.Event()

    async def stuck_send(message: Message) -> None:
        await never.wait()

    guard = Guard(allowed)
    guard.start()
    sink = Sink(stuck_send, never_receive)
    sink.guard = guard
    with pytest.raises(StreamClosed) as closed:
        await asyncio.wait_for(
            sink.deliver({"type": "http.response.body", "body": b"x", "more_body": True}), 5
        )
    assert closed.value.reason is CloseReason.SEND_TIMEOUT
    assert sink.ended is CloseReason.SEND_TIMEOUT and not sink.aborted
    task = asyncio.current_task()
    assert task is not None and (not hasattr(task, "cancelling") or task.cancelling() == 0)
    # Nothing more is sent on a connection given up on.
    await sink.send({"type": "http.response.body", "body": b"", "more_body": False})

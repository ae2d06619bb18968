"""The fast paths (``django_sse/fastpaths/``) give what the plain, public route gives."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import SyncToAsync, ThreadSensitiveContext, sync_to_async
from django.contrib.auth.models import User
from django.contrib.sessions.backends import cached_db as cached_db_store
from django.contrib.sessions.backends import db as db_store
from django.db import connection, transaction
from django.db.models import F
from django.http import HttpRequest
from django.test.utils import CaptureQueriesContext
from hypothesis import given, settings
from hypothesis import strategies as st

from django_sse import publish
from django_sse.access import Access
from django_sse.auth import authorize_streams
from django_sse.database import primary
from django_sse.fastpaths import asgiref_threads, replay_sql, sql
from django_sse.fastpaths.asgiref_threads import release_request_thread
from django_sse.fastpaths.daphne_write import can_write_directly
from django_sse.fastpaths.eager_send import start_send, start_send_plain
from django_sse.fastpaths.jsoncodec import build_compact_dumps, json_text
from django_sse.fastpaths.sessions import preload_sessions, preload_sessions_plain
from django_sse.fastpaths.ssetext import encode_stored_events, encode_stored_events_plain
from django_sse.identity import hash_session_key
from django_sse.jsontext import dump_data
from django_sse.lifecycle import EVENT_TYPE_RE
from django_sse.models import Job, JobEvent
from django_sse.replay import StoredEvent
from django_sse.servers import Connection
from tests.live.chunks_app import chunk_bytes
from tests.live.processes import (
    ROOT,
    child_env,
    free_port,
    server_command,
    stop_process,
    wait_listening,
    wait_until,
)

# -- jsoncodec: the JSON text of stored data ---------------------------------------------------

# Values json.loads can give back: what a JSONField column holds.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


def reference(value: Any) -> str:
    """What the ORM's JSONField.from_db_value and dump_data made of a column value."""
    if value is None:
        return "null"
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        decoded = value
    return dump_data(decoded)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_json_text_is_dump_data_of_the_decoded_value(value: Any) -> None:
    # As stored (SQLite: compact, ASCII escapes) and as PostgreSQL's jsonb gives it back.
    for text in (
        json.dumps(value, separators=(",", ":")),
        json.dumps(value, ensure_ascii=False),
        f" {json.dumps(value)}\n",
    ):
        assert json_text(text) == reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        '{"a": 1} trailing',
        "[1, 2",
        "NaN",
        "-Infinity",
        '"\\ud800"',
        '{"é": "\\u00e9", "s": "a\\nb\\r\\u2028"}',
        "1e-07",
        "0.0000001",
        "100000000000000000000000",
        "12.50",
    ],
)
def test_json_text_of_odd_column_values(text: str) -> None:
    assert json_text(text) == reference(text)
    assert json_text(None) == "null"


def test_compact_encoder_without_the_c_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    encode = build_compact_dumps()
    value = {"a": [1, 2.5, None, True], "é": "ü\n"}
    assert encode(value) == dump_data(value)


@pytest.mark.parametrize("fault", ["disagrees", "raises"])
def test_compact_encoder_is_checked_before_use(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    real = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    assert real is not None

    def changed(*args: Any) -> Any:
        if args[0] is not None:  # json.dumps' own call (it checks for cycles): untouched
            return real(*args)
        if fault == "raises":
            raise TypeError("another signature")
        return real(*args[:4], ": ", ", ", *args[6:])  # spaces after the separators

    monkeypatch.setattr(json.encoder, "c_make_encoder", changed)
    encode = build_compact_dumps()
    assert encode({"a": [1, 2]}) == '{"a":[1,2]}'


# -- sql: the hand-written write of a batch of events ------------------------------------------

NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=datetime.timezone.utc)
# Batches as recording.py hands them over: (type, data) of each event, the job fields they set.
BATCHES: dict[str, tuple[list[tuple[str, Any]], dict[str, Any]]] = {
    "one event": ([("step", {"n": 1})], {}),
    "progress": (
        [("progress", {"current": 3, "total": 10, "message": "é"})],
        {"current": 3, "total": 10, "message": "é", "status": "running"},
    ),
    "several, no data": ([("a", None), ("b", None), ("c", [])], {}),
    "an end with a result": (
        [("note", "x"), ("succeeded", {"result": {"rows": [1, 2.5, None]}})],
        {"status": "succeeded", "result": {"rows": [1, 2.5, None]}, "finished_at": NOW},
    ),
    "an error": ([("failed", {"error": "boom"})], {"status": "failed", "error": "boom"}),
}


def write(
    job: Job, batch: tuple[list[tuple[str, Any]], dict[str, Any]]
) -> tuple[tuple[int, str] | None, list[JobEvent]]:
    events = [JobEvent(job_id=job.pk, type=type_, data=data) for type_, data in batch[0]]
    return sql.write_events("default", Job, job.pk, dict(batch[1]), NOW, events), events


def rows(job: Job) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job's row and its events' rows as values, without what differs between two jobs."""
    job_row = Job.objects.filter(pk=job.pk).values().get()
    for name in ("id", "created_at"):
        job_row.pop(name)
    event_rows = list(
        JobEvent.objects.filter(job=job).order_by("seq").values("seq", "type", "data")
    )
    return job_row, event_rows


def two_jobs(status: str = "running") -> tuple[Job, Job]:
    owner = User.objects.create(username=f"u{uuid.uuid4().hex}")
    fields = {"owner": owner, "name": "Same", "status": status, "last_seq": 4, "current": 1}
    return Job.objects.create(**fields), Job.objects.create(**fields)


def statements(queries: CaptureQueriesContext) -> list[str]:
    """The first word of each SQL statement run (transaction control left out)."""
    kinds = ("WITH", "UPDATE", "INSERT", "SELECT")
    found = [q["sql"].lstrip().split()[0] for q in queries.captured_queries]
    return [kind for kind in found if kind in kinds]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_atomic", [False, True], ids=["autocommit", "in atomic"])
@pytest.mark.parametrize("name", list(BATCHES))
def test_hand_written_and_orm_writes_give_the_same_rows(
    monkeypatch: pytest.MonkeyPatch, name: str, in_atomic: bool
) -> None:
    assert sql.can_update_returning(connection)  # PostgreSQL, SQLite 3.35+: the fast route
    fast_job, plain_job = two_jobs()
    outer = transaction.atomic if in_atomic else contextlib.nullcontext
    with outer(), CaptureQueriesContext(connection) as queries:
        fast, fast_events = write(fast_job, BATCHES[name])
    assert "SELECT" not in statements(queries)
    monkeypatch.setattr(sql, "can_update_returning", lambda connection: False)
    with outer(), CaptureQueriesContext(connection) as queries:
        plain, plain_events = write(plain_job, BATCHES[name])
    assert statements(queries)[:2] == ["UPDATE", "SELECT"]  # the ORM's route
    count = len(BATCHES[name][0])
    assert fast == plain == (4 + count, BATCHES[name][1].get("status", "running"))
    assert rows(fast_job) == rows(plain_job)
    # The events come back saved, as the ORM's save() leaves them.
    for job, events in ((fast_job, fast_events), (plain_job, plain_events)):
        assert [e.seq for e in events] == list(range(5, 5 + count))
        assert [(e._state.adding, e._state.db) for e in events] == [(False, "default")] * count
        stored = {e.pk: (e.seq, e.type, e.data) for e in JobEvent.objects.filter(job=job)}
        assert {e.pk: (e.seq, e.type, e.data) for e in events} == stored
        assert all(e.created_at is not None for e in events)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("status", ["succeeded", "cancelled"])
def test_hand_written_and_orm_writes_leave_a_finished_job_alone(
    monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    fast_job, plain_job = two_jobs(status)
    before = rows(fast_job), rows(plain_job)
    assert write(fast_job, BATCHES["one event"])[0] is None
    monkeypatch.setattr(sql, "can_update_returning", lambda connection: False)
    assert write(plain_job, BATCHES["one event"])[0] is None
    assert (rows(fast_job), rows(plain_job)) == before


@pytest.mark.django_db(transaction=True)
def test_an_update_with_an_expression_takes_the_orm_route() -> None:
    job = two_jobs()[0]
    events = [JobEvent(job_id=job.pk, type="bump", data={})]
    with CaptureQueriesContext(connection) as queries:
        written = sql.write_events(
            "default", Job, job.pk, {"current": F("current") + 5}, NOW, events
        )
    assert written == (5, "running")
    assert statements(queries) == ["UPDATE", "SELECT", "INSERT"]
    assert rows(job)[0]["current"] == 6


# -- replay_sql: a replay page's rows ----------------------------------------------------------

# Values of every JSON kind, one of them past a small page's byte limit.
STORED_DATA: list[Any] = [
    {"n": 1, "s": "line\nbreak", "f": 1764000000.123456},
    [1, 2.5, None, True, {"x": []}],
    "plain text",
    None,
    10**20,
    {"b": 1, "a": 2},
    {"big": "x" * 300},
    {"n": 8},
]
NON_ASCII_DATA: list[Any] = [{"é": "ü\u2028"}, "\U0001f600"]


def published(job: Job, values: list[Any]) -> None:
    for value in values:
        publish(job, "step", value)


def same_text(rows: list[tuple[int, str, Any]]) -> list[tuple[int, str, str]]:
    """Rows with ``data`` as the stream sends it."""
    return [(seq, type_, json_text(data)) for seq, type_, data in rows]


@pytest.mark.django_db(transaction=True)
def test_the_hand_written_select_gives_the_orms_rows(job: Job) -> None:
    published(job, STORED_DATA)
    using = primary(JobEvent)
    assert replay_sql.raw_rows_supported(connection.vendor)
    last = len(STORED_DATA)
    for after in range(last + 1):
        for upto in (None, after, after + 2, last):
            for limit in (1, 3, 100):
                for max_bytes in (1, 40, 120, 10_000):
                    fast = replay_sql.select_page_rows(using, job.pk, after, upto, limit, max_bytes)
                    plain = replay_sql.select_page_rows_orm(
                        using, job.pk, after, upto, limit, max_bytes
                    )
                    assert (same_text(fast[0]), fast[1], fast[2]) == (
                        same_text(plain[0]),
                        plain[1],
                        plain[2],
                    ), (after, upto, limit, max_bytes)


@pytest.mark.django_db(transaction=True)
def test_the_hand_written_select_gives_the_orms_text_of_any_character(job: Job) -> None:
    # Sizes differ here (bytes on the fast route, characters on the ORM's), the rows do not.
    published(job, STORED_DATA + NON_ASCII_DATA)
    using = primary(JobEvent)
    fast, _, _ = replay_sql.select_page_rows(using, job.pk, 0, None, 100, 10**6)
    plain, _, _ = replay_sql.select_page_rows_orm(using, job.pk, 0, None, 100, 10**6)
    assert len(fast) == len(STORED_DATA + NON_ASCII_DATA)
    assert same_text(fast) == same_text(plain)
    stored = JobEvent.objects.filter(job=job).order_by("seq").values_list("data", flat=True)
    assert [text for _, _, text in same_text(fast)] == [dump_data(value) for value in stored]


# -- ssetext: the SSE bytes of a page of stored events --------------------------------------

event_types = st.from_regex(EVENT_TYPE_RE.pattern.replace("\\Z", ""), fullmatch=True) | st.text(
    max_size=8
)
# Data as stored (JSON text on one line) and as it might be (any text, line breaks included).
event_data = json_values.map(dump_data) | st.text()


@given(st.lists(st.tuples(st.integers(0, 2**63 - 1), event_types, event_data), max_size=20))
@settings(max_examples=300, deadline=None)
def test_a_page_encoded_at_once_is_what_encode_event_makes_of_each(
    events: list[tuple[int, str, str]],
) -> None:
    rows = [StoredEvent(*event) for event in events]
    try:
        plain = encode_stored_events_plain(rows)
    except (ValueError, UnicodeEncodeError) as refused:
        with pytest.raises(type(refused)):
            encode_stored_events(rows)
        return
    assert encode_stored_events(rows) == plain


# -- asgiref_threads: the request's thread, let go --------------------------------------------


@pytest.mark.asyncio
async def test_the_request_thread_is_released() -> None:
    async with ThreadSensitiveContext():
        first = await sync_to_async(threading.get_ident)()
        context = SyncToAsync.thread_sensitive_context.get()
        executor = SyncToAsync.context_to_thread_executor[context]
        assert await release_request_thread() is True
        assert context not in SyncToAsync.context_to_thread_executor
        assert executor._shutdown  # type: ignore[attr-defined]  # ThreadPoolExecutor's own flag
        # A later thread-sensitive call of the request still runs, on a fresh thread.
        assert await sync_to_async(threading.get_ident)() != first


@pytest.mark.asyncio
async def test_without_asgirefs_internals_the_thread_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A future asgiref, as the fast path sees it: without the two class attributes.
    monkeypatch.setattr(asgiref_threads, "SyncToAsync", type("SyncToAsync", (), {}))
    async with ThreadSensitiveContext():
        first = await sync_to_async(threading.get_ident)()
        assert await release_request_thread() is False
        assert await sync_to_async(threading.get_ident)() == first


@pytest.mark.asyncio
async def test_outside_a_request_nothing_is_released() -> None:
    assert await release_request_thread() is False


# -- eager_send: a server's send started in the caller's task ----------------------------------


class FakeSend:
    """A server's ``send``: it may suspend a few times (back-pressure), and fail before or
    after."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.closed: list[int] = []

    async def __call__(self, body: int, suspensions: int, fails: str | None) -> None:
        try:
            if fails == "before":
                raise OSError(f"{body} before")
            for _ in range(suspensions):
                await asyncio.sleep(0)
            if fails == "after":
                raise OSError(f"{body} after")
            self.sent.append(body)
        finally:
            self.closed.append(body)


SendPlan = list[tuple[int, str | None]]


async def sent_through(start: Any, plan: SendPlan) -> tuple[list[int], list[int], list[str]]:
    send = FakeSend()
    errors: list[str] = []
    for body, (suspensions, fails) in enumerate(plan):
        try:
            pending = start(send(body, suspensions, fails))
            if pending is not None:
                await pending
        except OSError as exc:
            errors.append(str(exc))
    return send.sent, send.closed, errors


@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([None, "before", "after"]))))
@settings(max_examples=200, deadline=None)
def test_a_send_started_at_once_sends_what_a_task_sends(plan: SendPlan) -> None:
    assert asyncio.run(sent_through(start_send, plan)) == asyncio.run(
        sent_through(start_send_plain, plan)
    )


@pytest.mark.asyncio
async def test_a_send_that_never_suspends_is_done_at_once_and_a_cancelled_one_is_closed() -> None:
    send = FakeSend()
    assert start_send(send(1, 0, None)) is None
    assert send.sent == [1]
    pending = start_send(send(2, 3, None))
    assert pending is not None and send.sent == [1]
    # Cancelled before its task ever ran: the coroutine started by hand is closed all the same.
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert send.sent == [1] and send.closed == [1, 2]
    pending = start_send(send(3, 3, None))
    assert pending is not None
    await asyncio.sleep(0)  # its task has run a step
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert send.sent == [1] and send.closed == [1, 2, 3]


# -- sessions.py ---------------------------------------------------------------------------------


def session_stores(route: str) -> tuple[list[Any], CaptureQueriesContext]:
    """Stores for a live session with data, an anonymous one, an expired one, a deleted one and
    one already loaded, plus a cached_db store; preloaded by ``route``, then each read."""
    live = db_store.SessionStore()
    live["n"] = 1
    live.create()
    anonymous = db_store.SessionStore()
    anonymous.create()
    expired = db_store.SessionStore()
    expired.set_expiry(-1)
    expired.create()
    keys = [live.session_key, anonymous.session_key, expired.session_key, "x" * 32]
    stores: list[Any] = [db_store.SessionStore(key) for key in keys]
    loaded = db_store.SessionStore(live.session_key)
    loaded["m"] = 2  # loads it, and changes it: a preload must not overwrite that
    other = cached_db_store.SessionStore(live.session_key)
    preload = preload_sessions if route == "fast" else preload_sessions_plain
    with CaptureQueriesContext(connection) as queries:
        preload([*stores, loaded, other, None])
        data = [dict(store.items()) for store in [*stores, loaded, other]]
    keys = [store.session_key for store in [*stores, loaded, other]]  # after loading
    return list(zip(keys, data, strict=True)), queries


@pytest.mark.django_db
def test_preloaded_sessions_hold_what_each_store_loads_itself() -> None:
    fast, fast_queries = session_stores("fast")
    plain, plain_queries = session_stores("plain")
    # The same data and the same keys (an expired or unknown key dropped) whichever route.
    assert [(key is None, data) for key, data in fast] == [
        (key is None, data) for key, data in plain
    ]
    assert [data for _key, data in fast] == [{"n": 1}, {}, {}, {}, {"n": 1, "m": 2}, {"n": 1}]
    assert [key is None for key, _data in fast][:4] == [False, False, True, True]

    def session_reads(queries: CaptureQueriesContext) -> int:
        return sum('"django_session"' in q["sql"] for q in queries.captured_queries)

    # Plain: one read per store not loaded yet (the cached_db one too: its cache is empty).
    # Fast: one for the four database stores, then the two with no row and the cached_db store
    # read themselves.
    assert session_reads(plain_queries) == 4 + 1
    assert session_reads(fast_queries) == 1 + 2 + 1


@pytest.mark.django_db
def test_streams_authorized_together_read_their_sessions_in_one_query() -> None:
    asks = []
    for _ in range(5):
        store = db_store.SessionStore()
        store.create()
        assert store.session_key is not None
        job = Job.objects.create(session_hash=hash_session_key(store.session_key))
        request = HttpRequest()
        request.session = db_store.SessionStore(store.session_key)
        asks.append((request, job.pk))
    with CaptureQueriesContext(connection) as queries:
        outcomes = authorize_streams(asks)
    assert all(isinstance(outcome, Access) for outcome in outcomes)
    assert sum('"django_session"' in q["sql"] for q in queries.captured_queries) == 1


# -- daphne_write: a body chunk written straight to Daphne's socket ----------------------------

CHUNKS_APPLICATION = "tests.live.chunks_app:application"


class ChunksServer:
    """A Daphne serving ``tests.live.chunks_app``, and what the application reported."""

    def __init__(self, port: int, report: Path, log: Path) -> None:
        self.port = port
        self.report = report
        self.log = log

    def lines(self, name: str) -> list[dict[str, Any]]:
        if not self.report.exists():
            return []
        lines = [json.loads(line) for line in self.report.read_text().splitlines()]
        return [line for line in lines if line["id"] == name]

    def outcome(self, name: str) -> dict[str, Any]:
        """The application's report on request ``name``, once it has finished it."""
        done = wait_until(lambda: [line for line in self.lines(name) if "route" in line], 20)
        return done[0]


@pytest.fixture(scope="module")
def chunks_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChunksServer]:
    directory = tmp_path_factory.mktemp("chunks")
    port = free_port()
    server = ChunksServer(port, directory / "report.jsonl", directory / "daphne.log")
    with open(server.log, "wb") as out:
        process = subprocess.Popen(
            server_command("daphne", port, CHUNKS_APPLICATION),
            cwd=ROOT,
            env=child_env(CHUNKS_REPORT=str(server.report)),
            stdout=out,
            stderr=out,
        )
    try:
        wait_listening(process, port, server.log.read_text)
        yield server
    finally:
        stop_process(process)
    log = server.log.read_text()
    assert "Traceback" not in log and "Unhandled" not in log, log


def request_bytes(query: str) -> bytes:
    return f"GET /chunks?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def read_response(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes, bytes, bytes]:
    """One chunked response from ``sock``: its head (without ``Date``), its body as framed on
    the wire, the body decoded, and what was read past its end."""
    data = buffered

    def more() -> None:
        nonlocal data
        received = sock.recv(65536)
        assert received, "the connection closed before the end of the body"
        data += received

    while b"\r\n\r\n" not in data:
        more()
    head, _, data = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    decoded = []
    position = 0
    while True:
        while b"\r\n" not in data[position:]:
            more()
        line_end = data.index(b"\r\n", position)
        length = int(data[position:line_end], 16)
        end = line_end + 2 + length + 2
        while len(data) < end:
            more()
        assert data[end - 2 : end] == b"\r\n"
        decoded.append(data[line_end + 2 : end - 2])
        position = end
        if length == 0:
            break
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
    return b"\r\n".join(lines), data[:position], b"".join(decoded), data[position:]


def fetch(
    server: ChunksServer, name: str, query: str, *, rcvbuf: int | None = None, hold: bool = False
) -> tuple[bytes, bytes, bytes]:
    """Ask for ``query`` on a connection of its own; if ``hold``, read nothing until the
    application has been paused (its client does not keep up). Then, on the same connection, a
    second request: the first response left the connection as HTTP/1.1 keep-alive needs it."""
    with socket.socket() as sock:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request_bytes(f"id={name}&{query}"))
        if hold:
            wait_until(lambda: any(line.get("paused") for line in server.lines(name)), 20)
        head, framed, body, rest = read_response(sock)
        sock.sendall(request_bytes(f"id={name}-next&route=plain&count=2&size=5"))
        _, _, after, _ = read_response(sock, rest)
        assert after == chunk_bytes(0, 5) + chunk_bytes(1, 5)
    return head, framed, body


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("count", "size", "options", "outcome"),
    [
        (300, 100, {}, "whole"),
        # Ten chunks in each turn of the loop: Twisted would join them, the direct route
        # sends each (the kernel joins them).
        (300, 100, {"burst": 10}, "whole"),
        # The kernel takes part of a chunk, Twisted buffers the rest (and pauses the stream).
        (30, 200_000, {"sndbuf": 4096, "rcvbuf": 4096, "hold": True}, "part"),
    ],
    ids=["sent whole", "ten a turn", "sent in part, client not reading"],
)
def test_direct_writes_put_the_plain_routes_bytes_on_the_wire(
    chunks_server: ChunksServer, count: int, size: int, options: dict[str, Any], outcome: str
) -> None:
    hold = options.get("hold", False)
    query = f"count={count}&size={size}&burst={options.get('burst', 1)}"
    if "sndbuf" in options:
        query += f"&sndbuf={options['sndbuf']}"
    responses = {}
    for route in ("plain", "direct"):
        name = f"{route}-{count}x{size}-{options.get('burst', 1)}"
        responses[route] = fetch(
            chunks_server, name, f"route={route}&{query}", rcvbuf=options.get("rcvbuf"), hold=hold
        )
        report = chunks_server.outcome(name)
        assert report["error"] is None
        assert report["paused"] is hold
        assert report["direct"] is (route == "direct")
        assert report["sent_length"] == count * size
    # Same head, same framing, same bytes in the same order, the same last chunk.
    assert responses["direct"] == responses["plain"]
    _, framed, body = responses["direct"]
    assert body == b"".join(chunk_bytes(index, size) for index in range(count))
    assert framed.endswith(b"\r\n0\r\n\r\n")
    # And the direct route did write: the first chunk goes with the response's head
    # (Request.write's to send), the others straight to the socket, whole or in part.
    counts = chunks_server.outcome(name)["outcomes"]
    assert sum(counts.values()) == count
    assert 1 <= counts["declined"] < count
    assert counts.get(outcome, 0) >= 1


@pytest.mark.e2e
@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("route", ["plain", "direct"])
def test_a_closed_connection_ends_both_routes_quietly(
    chunks_server: ChunksServer, route: str, reset: bool
) -> None:
    name = f"closed-{route}-{reset}"
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", chunks_server.port))
        sock.sendall(request_bytes(f"id={name}&route={route}&count=200&size=20000"))
        assert sock.recv(4096)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    report = chunks_server.outcome(name)
    assert report["error"] is None
    assert report["direct"] is (route == "direct")
    if route == "direct":
        assert sum(report["outcomes"].values()) == 200


def test_only_a_plain_tcp_http11_twisted_request_is_written_directly() -> None:
    class Other:
        channel = None

    assert not can_write_directly(Other())
    assert not can_write_directly(object())

    async def send(message: Any) -> None:
        pass

    # Servers with no shorter road keep their own send.
    assert Connection().body_send(send) is send


def test_a_row_whose_key_differs_in_case_is_left_to_its_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # MySQL's default collation matches "ABC..." with the row "abc...": the store asked for
    # "ABC..." must load itself (the plain route), not fail the whole batch.
    class Rows:
        def filter(self, **kwargs: Any) -> Rows:
            return self

        def values_list(self, *fields: str) -> list[tuple[str, str]]:
            return [("abcdefgh12345678", db_store.SessionStore().encode({"n": 1}))]

    class Model:
        objects = Rows()

    monkeypatch.setattr(db_store.SessionStore, "get_model_class", classmethod(lambda cls: Model))
    store = db_store.SessionStore("ABCDEFGH12345678")
    assert preload_sessions([store]) == 0
    assert not hasattr(store, "_session_cache")

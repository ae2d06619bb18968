from __future__ import annotations

import datetime
import decimal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.db.models.signals import post_save
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext

from django_sse import apublish, publish, publishing
from django_sse.exceptions import (
    EventDataNotSerializable,
    EventDataTooLarge,
    InvalidEventType,
    JobFinished,
)
from django_sse.fastpaths import sql
from django_sse.identity import hash_session_key
from django_sse.lifecycle import ACTIVE_STATUSES, FINISHED_STATUSES, JobStatus
from django_sse.models import Job, JobEvent
from django_sse.recording import Entry, make_progress, progress_entry

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def user() -> User:
    return User.objects.create(username="ann")


@pytest.fixture
def job(user: User) -> Job:
    return Job.objects.create(owner=user, name="Report")


@pytest.fixture(params=["native", "orm"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each write path: "native" is what the test database takes (one statement on
    PostgreSQL, UPDATE ... RETURNING on SQLite), "orm" the fallback for other databases."""
    if request.param == "orm":
        monkeypatch.setattr(sql, "can_update_returning", lambda connection: False)
    return str(request.param)


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[JobEvent]]:
    """Events handed to the channel layer, in the order the pushes happened."""
    seen: list[JobEvent] = []
    lock = threading.Lock()

    def fake_push(event: JobEvent) -> None:
        with lock:
            seen.append(event)

    monkeypatch.setattr("django_sse.pushing.push_event", fake_push)
    yield seen


def stored(job: Job) -> list[tuple[int, str]]:
    return list(JobEvent.objects.filter(job=job).order_by("seq").values_list("seq", "type"))


def test_job_defaults(user: User) -> None:
    job = Job.objects.create(owner=user, name="Report")
    job.refresh_from_db()
    assert isinstance(job.pk, uuid.UUID)
    assert job.status == "pending"
    assert (job.current, job.total, job.message, job.result, job.error) == (0, None, "", None, "")
    assert job.finished_at is None
    assert job.last_seq == 0
    assert str(job) == "Report (Pending)"


def test_status_groups_cover_every_status() -> None:
    assert set(JobStatus.values) == ACTIVE_STATUSES | FINISHED_STATUSES
    assert not ACTIVE_STATUSES & FINISHED_STATUSES


def test_publish_numbers_events_from_one(write_path: str, job: Job) -> None:
    events = [publish(job, "step", {"n": n}) for n in range(3)]
    assert [e.seq for e in events] == [1, 2, 3]
    assert stored(job) == [(1, "step"), (2, "step"), (3, "step")]
    job.refresh_from_db()
    assert job.last_seq == 3


def test_publish_accepts_a_job_id(job: Job) -> None:
    assert publish(job.pk, "a").seq == 1
    assert publish(str(job.pk), "b").seq == 2


def test_data_goes_through_djangos_json_encoder(write_path: str, job: Job) -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    event = publish(job, "x", {"when": when, "amount": decimal.Decimal("1.50"), "id": ident})
    expected = {"when": "2026-01-02T03:04:05Z", "amount": "1.50", "id": str(ident)}
    assert event.data == expected
    event.refresh_from_db()
    assert event.data == expected


@pytest.mark.parametrize(
    "bad",
    ["", "a b", "a:b", "a\nb", "a\rb", "a\x00b", "x" * 65, "é", None, 5, "started", "succeeded"],
)
def test_bad_event_type_is_refused_and_nothing_stored(job: Job, bad: object) -> None:
    with pytest.raises(InvalidEventType) as info:
        publish(job, bad, {})  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)
    assert stored(job) == []


def test_the_unchecked_writer_is_private_so_every_public_write_is_checked() -> None:
    assert set(publishing.__all__) == {
        "apublish",
        "apublish_many",
        "encode_data",
        "publish",
        "publish_many",
    }
    assert not hasattr(publishing, "record")


def test_event_type_of_64_safe_characters_is_fine(job: Job) -> None:
    name = ("Az09_-." * 10)[:64]
    assert publish(job, name).type == name


def test_unencodable_data_is_refused(job: Job) -> None:
    with pytest.raises(EventDataNotSerializable, match="cannot be encoded as JSON"):
        publish(job, "x", {"o": object()})
    assert stored(job) == []


@override_settings(DJANGO_SSE={"MAX_DATA_BYTES": 100})
def test_data_over_the_limit_is_refused(job: Job) -> None:
    publish(job, "fits", "x" * 90)
    with pytest.raises(EventDataTooLarge, match="over the limit of 100 bytes"):
        publish(job, "x", "x" * 120)
    assert stored(job) == [(1, "fits")]


def test_limit_counts_utf8_bytes(job: Job) -> None:
    with override_settings(DJANGO_SSE={"MAX_DATA_BYTES": 10}), pytest.raises(EventDataTooLarge):
        publish(job, "x", "ééééé")  # 5 characters, 12 bytes with the quotes


def test_missing_job(write_path: str, db: None) -> None:
    with pytest.raises(Job.DoesNotExist):
        publish(uuid.uuid4(), "x")
    with pytest.raises(Job.DoesNotExist, match="is not a job id"):
        publish("not-a-uuid", "x")


def test_lifecycle(write_path: str, job: Job) -> None:
    job.start()
    assert job.status == "running"
    job.set_progress(3, 10, "three")
    result = {"rows": 3, "day": datetime.date(2026, 1, 2)}
    event = job.succeed(result)
    assert event.type == "succeeded"
    assert event.data == {"result": {"rows": 3, "day": "2026-01-02"}}
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert (job.current, job.total, job.message) == (3, 10, "three")
    assert job.result == {"rows": 3, "day": "2026-01-02"}
    assert job.finished_at is not None
    assert job.is_finished
    assert stored(job) == [(1, "started"), (2, "progress"), (3, "succeeded")]


def test_fail_and_cancel(write_path: str, user: User) -> None:
    failed = Job.objects.create(owner=user)
    assert failed.fail("disk full").data == {"error": "disk full"}
    failed.refresh_from_db()
    assert (failed.status, failed.error) == ("failed", "disk full")
    cancelled = Job.objects.create(owner=user)
    cancelled.cancel()
    cancelled.refresh_from_db()
    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None


@pytest.mark.parametrize("end", ["succeed", "fail", "cancel"])
def test_finished_job_takes_no_more_events(write_path: str, job: Job, end: str) -> None:
    getattr(job, end)()
    before = stored(job)
    stale = Job.objects.get(pk=job.pk)
    for attempt in (
        lambda: publish(job, "x"),
        lambda: stale.start(),
        lambda: stale.succeed(),
        lambda: stale.fail("again"),
        lambda: stale.cancel(),
    ):
        with pytest.raises(JobFinished, match="takes no more events"):
            attempt()
    assert stored(job) == before


def test_async_twins(job: Job) -> None:
    async def run() -> None:
        await job.astart()
        await apublish(job, "step", {"n": 1})
        await job.aset_progress(1, 2)
        await job.asucceed("done")

    async_to_sync(run)()
    assert stored(job) == [(1, "started"), (2, "step"), (3, "progress"), (4, "succeeded")]


def test_apublish_checks_input_first(job: Job) -> None:
    with pytest.raises(InvalidEventType):
        async_to_sync(apublish)(job, "bad type")
    assert stored(job) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [((-1,), "current"), ((1.5,), "current"), ((1, -2), "total"), ((1, 2, "x" * 501), "message")],
)
def test_bad_progress_is_refused(job: Job, args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        job.set_progress(*args)  # type: ignore[arg-type]
    assert stored(job) == []


# -- delivery on commit ----------------------------------------------------------------------


def test_event_is_pushed_after_commit(job: Job, pushed: list[JobEvent]) -> None:
    publish(job, "now")
    assert [e.type for e in pushed] == ["now"]


def test_event_in_atomic_is_pushed_only_after_commit(
    write_path: str, job: Job, pushed: list[JobEvent]
) -> None:
    with transaction.atomic():
        publish(job, "inside")
        assert pushed == []
    assert [e.type for e in pushed] == ["inside"]


def test_rolled_back_event_is_never_pushed_nor_stored(
    write_path: str, job: Job, pushed: list[JobEvent]
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        publish(job, "doomed")
        raise RuntimeError("boom")
    assert pushed == []
    assert stored(job) == []
    # The number was not used up: the next event is still #1.
    assert publish(job, "next").seq == 1


# -- progress coalescing ---------------------------------------------------------------------


def test_tight_progress_loop_writes_few_rows_and_keeps_the_latest(job: Job) -> None:
    job.start()
    for i in range(100_000):
        job.set_progress(i, 100_000, f"row {i}")
    written = JobEvent.objects.filter(job=job, type="progress").count()
    assert 1 <= written < 100
    job.succeed()
    events = list(JobEvent.objects.filter(job=job).order_by("seq"))
    assert events[-1].type == "succeeded"
    assert events[-2].type == "progress"
    assert events[-2].data == {"current": 99_999, "total": 100_000, "message": "row 99999"}
    job.refresh_from_db()
    assert (job.current, job.message) == (99_999, "row 99999")


def test_pending_progress_goes_before_the_next_event(write_path: str, job: Job) -> None:
    with override_settings(DJANGO_SSE={"PROGRESS_INTERVAL_SECONDS": 3600}):
        assert job.set_progress(1, 10) is not None
        assert job.set_progress(2, 10) is None
        assert job.set_progress(3, 10) is None
        publish(job, "note")
    events = list(JobEvent.objects.filter(job=job).values_list("seq", "type", "data"))
    assert events == [
        (1, "progress", {"current": 1, "total": 10, "message": ""}),
        (2, "progress", {"current": 3, "total": 10, "message": ""}),
        (3, "note", None),
    ]


def test_flush_progress(job: Job) -> None:
    with override_settings(DJANGO_SSE={"PROGRESS_INTERVAL_SECONDS": 3600}):
        job.set_progress(1)
        job.set_progress(2)
        assert job.flush_progress() is not None
        assert job.flush_progress() is None
    assert stored(job) == [(1, "progress"), (2, "progress")]


def test_pending_progress_survives_a_failed_write(write_path: str, job: Job) -> None:
    with override_settings(DJANGO_SSE={"PROGRESS_INTERVAL_SECONDS": 3600}):
        job.set_progress(1)
        job.set_progress(2)
        with pytest.raises(InvalidEventType):
            publish(job, "bad type")
        with pytest.raises(RuntimeError), transaction.atomic():
            publish(job, "rolled-back")
            raise RuntimeError
        publish(job, "kept")
    assert [(d or {}).get("current") for d in JobEvent.objects.values_list("data", flat=True)] == [
        1,
        2,
        None,
    ]


# -- the write paths -------------------------------------------------------------------------


def statements(queries: CaptureQueriesContext) -> list[str]:
    """The SQL statements run (transaction control left out)."""
    kinds = ("WITH", "UPDATE", "INSERT", "SELECT", "DELETE")
    return [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().startswith(kinds)]


def test_can_update_returning() -> None:
    class Features:
        can_return_columns_from_insert = True

    class Connection:
        vendor = "mysql"  # MariaDB returns from INSERT, not from UPDATE
        features = Features()

    assert not sql.can_update_returning(Connection())  # type: ignore[arg-type]
    Connection.vendor = "sqlite"
    assert sql.can_update_returning(Connection())  # type: ignore[arg-type]
    Features.can_return_columns_from_insert = False  # SQLite before 3.35
    assert not sql.can_update_returning(Connection())  # type: ignore[arg-type]
    assert sql.can_update_returning(connection)  # PostgreSQL, SQLite 3.35+ here


def test_publish_round_trips(job: Job) -> None:
    publish(job, "warm-up")
    with CaptureQueriesContext(connection) as queries:
        event = publish(job, "step", {"n": 1})
    sql = statements(queries)
    if connection.vendor == "postgresql":
        # One statement, which outside a transaction is one of its own.
        assert len(sql) == 1
        assert sql[0].startswith("WITH bumped AS (UPDATE ") and " INSERT INTO " in sql[0]
    else:
        assert [s.split()[0] for s in sql] == ["UPDATE", "INSERT"]
        assert "RETURNING" in sql[0]
    assert (event.seq, event.type, event.data) == (2, "step", {"n": 1})
    assert event.pk == JobEvent.objects.get(job=job, seq=2).pk
    assert not event._state.adding
    assert event._state.db == "default"


def test_orm_write_path_reads_the_number_back(write_path: str, job: Job) -> None:
    with CaptureQueriesContext(connection) as queries:
        publish(job, "step")
    kinds = [s.split()[0] for s in statements(queries)]
    if write_path == "orm":
        assert kinds == ["UPDATE", "SELECT", "INSERT"]
    else:
        assert "SELECT" not in kinds


def test_several_events_go_in_with_one_insert(write_path: str, job: Job) -> None:
    with override_settings(DJANGO_SSE={"PROGRESS_INTERVAL_SECONDS": 3600}):
        job.set_progress(1, 10)
        job.set_progress(2, 10)  # pending
        with CaptureQueriesContext(connection) as queries:
            events = JobEvent.objects.record(job, [Entry("note", {"a": 1})])
    inserts = [s for s in statements(queries) if s.startswith(("WITH", "INSERT"))]
    assert len(inserts) == (2 if write_path == "orm" else 1)
    assert [(e.seq, e.type, e.data) for e in events] == [
        (2, "progress", {"current": 2, "total": 10, "message": ""}),
        (3, "note", {"a": 1}),
    ]
    stored_rows = {e.pk: (e.seq, e.type) for e in JobEvent.objects.filter(job=job)}
    assert {e.pk: (e.seq, e.type) for e in events}.items() <= stored_rows.items()
    assert all(e.created_at is not None and not e._state.adding for e in events)
    assert (job.last_seq, job.current, job.status) == (3, 2, "running")
    job.refresh_from_db()
    assert (job.last_seq, job.current, job.total, job.status) == (3, 2, 10, "running")


def test_several_events_without_data(write_path: str, job: Job) -> None:
    # (On PostgreSQL, rows of NULLs only once made an INSERT ... SELECT of text.)
    entries = [Entry("a", None), Entry("b", None), Entry("c", [])]
    events = JobEvent.objects.record(job, entries)
    assert [(e.seq, e.data) for e in events] == [(1, None), (2, None), (3, [])]
    assert list(JobEvent.objects.filter(job=job).values_list("seq", "data")) == [
        (1, None),
        (2, None),
        (3, []),
    ]


def test_a_batch_is_pushed_once_after_commit(
    write_path: str, job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One push per recorded batch, with every event of it stored and committed by then.
    batches: list[list[tuple[int, bool]]] = []

    def fake_push_events(events: list[JobEvent]) -> None:
        committed = not transaction.get_connection().in_atomic_block
        batches.append(
            [(e.seq, committed and JobEvent.objects.filter(pk=e.pk).exists()) for e in events]
        )

    monkeypatch.setattr("django_sse.pushing.push_events", fake_push_events)
    with override_settings(DJANGO_SSE={"PROGRESS_INTERVAL_SECONDS": 3600}):
        job.set_progress(1)
        job.set_progress(2)  # pending: it goes with the next event, in its batch
        publish(job, "note")
        with transaction.atomic():
            publish(job, "a")
            publish(job, "b")
            assert len(batches) == 2
    assert batches == [[(1, True)], [(2, True), (3, True)], [(4, True)], [(5, True)]]


def test_with_autocommit_off_events_are_pushed_when_the_caller_commits(
    write_path: str, job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    pushed: list[int] = []  # the seqs of each batch pushed, in order
    monkeypatch.setattr(
        "django_sse.pushing.push_events", lambda events: pushed.extend(e.seq for e in events)
    )
    # Django's manual transaction management: on_commit() is refused outside an atomic block
    # there; the batch waits for the caller's commit.
    with override_settings(DJANGO_SSE={"PROGRESS_INTERVAL_SECONDS": 3600}):
        job.set_progress(1)
        job.set_progress(2)  # pending: written with the next event
        transaction.set_autocommit(False)
        try:
            publish(job, "note")
            assert pushed == [1]
            transaction.commit()
        finally:
            transaction.set_autocommit(True)
    assert pushed == [1, 2, 3]
    assert stored(job) == [(1, "progress"), (2, "progress"), (3, "note")]


@pytest.mark.skipif(
    connection.vendor == "sqlite",
    reason="Django cannot use atomic() with autocommit off on SQLite (its docs, 'Savepoints in "
    "SQLite'): a rollback there does not undo a write",
)
def test_with_autocommit_off_a_rollback_takes_the_batch_and_its_push(
    write_path: str, job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    pushed: list[int] = []  # the seqs of each batch pushed, in order
    monkeypatch.setattr(
        "django_sse.pushing.push_events", lambda events: pushed.extend(e.seq for e in events)
    )
    with override_settings(DJANGO_SSE={"PROGRESS_INTERVAL_SECONDS": 3600}):
        job.set_progress(1)
        job.set_progress(2)  # pending: still pending after the rollback
        transaction.set_autocommit(False)
        try:
            publish(job, "rolled-back")
            transaction.rollback()
            publish(job, "note")
            transaction.commit()
        finally:
            transaction.set_autocommit(True)
    assert pushed == [1, 2, 3]
    assert stored(job) == [(1, "progress"), (2, "progress"), (3, "note")]


def test_no_signal_receiver_of_ours_pushes_events() -> None:
    assert not post_save.has_listeners(JobEvent)


def test_progress_makes_a_pending_job_run_but_not_a_finished_one(write_path: str, job: Job) -> None:
    job.set_progress(1)
    job.refresh_from_db()
    assert job.status == "running"
    job.cancel()
    with pytest.raises(JobFinished):
        JobEvent.objects.record(job, [progress_entry(make_progress(2, None, ""))])
    job.refresh_from_db()
    assert (job.status, job.current) == ("cancelled", 1)


def test_updates_with_an_expression_take_the_orm_path(job: Job) -> None:
    entry = Entry("bump", {}, {"current": F("current") + 5})
    JobEvent.objects.record(job, [entry])
    JobEvent.objects.record(job, [entry])
    job.refresh_from_db()
    assert (job.current, job.last_seq) == (10, 2)
    assert stored(job) == [(1, "bump"), (2, "bump")]


def test_a_failed_insert_writes_nothing(write_path: str, job: Job) -> None:
    with override_settings(DJANGO_SSE={"PROGRESS_INTERVAL_SECONDS": 3600}):
        job.set_progress(1)
        job.set_progress(2)  # pending
        # A row in the way of the next number: the INSERT fails.
        JobEvent.objects.bulk_create([JobEvent(job=job, seq=2, type="squatter")])
        with pytest.raises(IntegrityError):
            publish(job, "x")
        job.refresh_from_db()
        assert (job.last_seq, job.current) == (1, 1)  # the UPDATE went with it
        JobEvent.objects.filter(type="squatter").delete()
        publish(job, "y")
    assert stored(job) == [(1, "progress"), (2, "progress"), (3, "y")]
    assert JobEvent.objects.get(job=job, seq=2).data == {"current": 2, "total": None, "message": ""}


# -- concurrent publishers -------------------------------------------------------------------


def test_concurrent_publishers_never_commit_out_of_order(write_path: str, job: Job) -> None:
    threads_count, per_thread = 4, 25
    errors: list[BaseException] = []
    done = threading.Event()
    seen_gaps: list[list[int]] = []

    def publisher(n: int) -> None:
        try:
            for i in range(per_thread):
                publish(job.pk, "step", {"thread": n, "i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    def observer() -> None:
        # Whatever instant a reader looks, it sees 1..k: never k+1 before k.
        try:
            while not done.is_set():
                seqs = list(
                    JobEvent.objects.filter(job_id=job.pk)
                    .order_by("seq")
                    .values_list("seq", flat=True)
                )
                if seqs != list(range(1, len(seqs) + 1)):
                    seen_gaps.append(seqs)
        finally:
            connection.close()

    watcher = threading.Thread(target=observer)
    watcher.start()
    workers = [threading.Thread(target=publisher, args=(n,)) for n in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    done.set()
    watcher.join(60)
    assert errors == []
    assert seen_gaps == []
    rows = list(JobEvent.objects.filter(job=job).order_by("seq").values_list("seq", "data"))
    assert [seq for seq, _ in rows] == list(range(1, threads_count * per_thread + 1))
    for n in range(threads_count):
        mine = [data["i"] for _, data in rows if data["thread"] == n]
        assert mine == list(range(per_thread))


# -- jobs for a request ----------------------------------------------------------------------


def _request_with_session(user: Any) -> Any:
    request = RequestFactory().post("/run/")
    SessionMiddleware(lambda r: HttpResponse()).process_request(request)
    request.user = user
    return request


def test_create_for_request_of_a_user(user: User) -> None:
    request = _request_with_session(user)
    job = Job.objects.create_for_request(request, name="Export")
    assert (job.owner, job.session_hash, job.name) == (user, "", "Export")


def test_create_for_request_of_an_anonymous_visitor_makes_a_session(db: None) -> None:
    request = _request_with_session(AnonymousUser())
    assert request.session.session_key is None
    job = Job.objects.create_for_request(request)
    assert job.owner is None
    key: str = getattr(request.session, "session_key", "")
    assert key
    # A keyed hash of the key, never the key itself (whoever reads it could take the session).
    assert key not in job.session_hash
    assert job.session_hash == hash_session_key(key)
    assert list(Job.objects.for_session_key(key)) == [job]
    assert list(Job.objects.for_request(request)) == [job]
    assert not Job.objects.for_session_key("another-key").exists()


@override_settings(SECRET_KEY="rotated", SECRET_KEY_FALLBACKS=["django_sse-tests"])
def test_anonymous_jobs_stay_the_sessions_after_a_secret_key_rotation(db: None) -> None:
    with override_settings(SECRET_KEY="django_sse-tests", SECRET_KEY_FALLBACKS=[]):
        job = Job.objects.create(session_hash=hash_session_key("the-key"))
    assert list(Job.objects.for_session_key("the-key")) == [job]

"""Helper processes of ``test_abuse.py`` (``DJANGO_SETTINGS_MODULE=tests.live.abuse_settings``).

``python -m tests.live abuse migrate``
    Create the tables of the shared database.

``python -m tests.live abuse make SPEC``
    Create what ``SPEC`` (a JSON object) lists and print one JSON object naming it::

        {"users": ["alice"], "anonymous": ["guest"],
         "jobs": [{"owner": "alice", "events": 20000, "size": 1000, "status": "running"}]}

    Each user gets a logged-in session, each anonymous name a saved session without a user;
    ``owner`` names either. A job's history is inserted in bulk: ``events`` events of type
    ``step`` whose data (``{"i": ..., "t": <now>, "pad": "xx..."}``) is about ``size`` bytes of
    JSON, the last one ``succeeded`` if ``status`` is ``succeeded``. Prints
    ``{"sessions": {name: key}, "users": {name: pk}, "jobs": [id, ...]}``.

``python -m tests.live abuse logout SESSION_KEY``
    Delete a session (a logout elsewhere) and print ``{"t": <time after the delete>}``.

``python -m tests.live abuse publish JOB_ID --count N --interval S --size B [--finish]``
    Publish N ``step`` events, one every S seconds on a fixed schedule, whose data carries the
    time it was made (``{"i": ..., "t": ..., "pad": ...}``); with ``--finish`` end the job with
    ``succeeded``. With ``--new-job-for NAME`` (a user name or an anonymous session key) the job
    is created first and ``{"job": id}`` printed. After each commit one JSON line
    ``{"seq": ..., "t": <time after commit>}``.

``python -m tests.live abuse count JOB_ID TYPE``
    Print the number of events of ``TYPE`` the job has.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

BULK_BATCH = 2000


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.live.abuse_settings")
    import django

    django.setup()


def _out(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def _user_session(user: Any) -> str:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    assert session.session_key is not None
    return session.session_key


def _anonymous_session() -> str:
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session["visited"] = True
    session.save()
    assert session.session_key is not None
    return session.session_key


def _payload(i: int, t: float, size: int) -> dict[str, Any]:
    # "message" is what the default HTML fragment shows: the time survives ?format=html.
    return {"i": i, "t": t, "message": f"t={t:.3f}", "pad": "x" * max(0, size - 70)}


def _insert_history(job: Any, count: int, size: int, status: str) -> None:
    """``count`` events in bulk (raw ``executemany``: 100,000 rows take seconds, not minutes)."""
    from django.db import connections, router, transaction
    from django.db.models import Field
    from django.utils import timezone

    from django_sse.models import Job, JobEvent

    def field(model: Any, name: str) -> Field[Any, Any]:
        found = model._meta.get_field(name)
        assert isinstance(found, Field), name
        return found

    using = router.db_for_write(JobEvent)
    connection = connections[using]
    qn = connection.ops.quote_name
    names = ("job", "seq", "type", "data", "created_at")
    columns = ", ".join(qn(str(field(JobEvent, n).column)) for n in names)
    sql = f"INSERT INTO {qn(JobEvent._meta.db_table)} ({columns}) VALUES (%s, %s, %s, %s, %s)"
    now = timezone.now()
    job_value = field(Job, "id").get_db_prep_value(job.pk, connection)
    created_value = field(JobEvent, "created_at").get_db_prep_value(now, connection)
    data_field = field(JobEvent, "data")
    t = time.time()
    with transaction.atomic(using=using), connection.cursor() as cursor:
        for start in range(1, count + 1, BULK_BATCH):
            rows = []
            for seq in range(start, min(start + BULK_BATCH, count + 1)):
                terminal = status == "succeeded" and seq == count
                type_ = "succeeded" if terminal else "step"
                data = {"result": None} if terminal else _payload(seq, t, size)
                rows.append(
                    (
                        job_value,
                        seq,
                        type_,
                        data_field.get_db_prep_save(data, connection),
                        created_value,
                    )
                )
            cursor.executemany(sql, rows)
        updates: dict[str, Any] = {"last_seq": count, "status": status}
        if status == "succeeded":
            updates["finished_at"] = now
        Job.objects.db_manager(using).filter(pk=job.pk).update(**updates)


def make(spec: dict[str, Any]) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from django_sse.models import Job

    user_model = get_user_model()
    users: dict[str, Any] = {}
    sessions: dict[str, str] = {}
    for name in spec.get("users", []):
        users[name] = user_model.objects.create_user(name, password="abuse-password")
        sessions[name] = _user_session(users[name])
    for name in spec.get("anonymous", []):
        sessions[name] = _anonymous_session()
    job_ids: list[str] = []
    for index, job_spec in enumerate(spec.get("jobs", [])):
        owner = job_spec["owner"]
        if owner in users:
            job = Job.objects.create(owner=users[owner], name=f"abuse {index}")
        else:
            job = _anonymous_job(sessions[owner], f"abuse {index}")
        events = int(job_spec.get("events", 0))
        status = str(job_spec.get("status", "running"))
        if events:
            _insert_history(job, events, int(job_spec.get("size", 100)), status)
        elif status != "pending":
            Job.objects.filter(pk=job.pk).update(status=status)
        job_ids.append(str(job.pk))
    return {
        "sessions": sessions,
        "users": {label: user.pk for label, user in users.items()},
        "jobs": job_ids,
    }


def logout(session_key: str) -> float:
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore(session_key)
    assert session.exists(session_key), f"no session {session_key}"
    session.delete()
    return time.time()


def _anonymous_job(session_key: str, name: str) -> Any:
    """A job of the anonymous session ``session_key``, made the way a view makes one (however
    the app records the owning session)."""
    from django.contrib.auth.models import AnonymousUser
    from django.contrib.sessions.backends.db import SessionStore
    from django.http import HttpRequest

    from django_sse.models import Job

    request = HttpRequest()
    request.user = AnonymousUser()
    request.session = SessionStore(session_key)
    return Job.objects.create_for_request(request, name=name)


def _new_job(owner: str) -> str:
    """A new job of the user named ``owner``, or else of the anonymous session ``owner``."""
    from django.contrib.auth import get_user_model

    from django_sse.models import Job

    user = get_user_model().objects.filter(username=owner).first()
    if user is not None:
        return str(Job.objects.create(owner=user, name="abuse new").pk)
    return str(_anonymous_job(owner, "abuse new").pk)


def publish_events(job_id: str, count: int, interval: float, size: int, finish: bool) -> None:
    from django_sse import publish
    from django_sse.models import Job

    job = Job.objects.get(pk=job_id)
    start = time.monotonic()
    for i in range(count):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        event = publish(job, "step", _payload(i, time.time(), size))
        _out({"seq": event.seq, "t": time.time()})
    if finish:
        event = job.succeed({"t": time.time()})
        _out({"seq": event.seq, "t": time.time()})


def count_events(job_id: str, type_: str) -> int:
    from django_sse.models import JobEvent

    return JobEvent.objects.filter(job_id=job_id, type=type_).count()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.live abuse")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate")
    make_cmd = commands.add_parser("make")
    make_cmd.add_argument("spec")
    logout_cmd = commands.add_parser("logout")
    logout_cmd.add_argument("session_key")
    publish_cmd = commands.add_parser("publish")
    publish_cmd.add_argument("job_id", nargs="?")
    publish_cmd.add_argument("--count", type=int, default=10)
    publish_cmd.add_argument("--interval", type=float, default=0.1)
    publish_cmd.add_argument("--size", type=int, default=100)
    publish_cmd.add_argument("--finish", action="store_true")
    publish_cmd.add_argument("--new-job-for")
    count_cmd = commands.add_parser("count")
    count_cmd.add_argument("job_id")
    count_cmd.add_argument("type")
    args = parser.parse_args(argv)
    _setup_django()
    if args.command == "migrate":
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
    elif args.command == "make":
        _out(make(json.loads(args.spec)))
    elif args.command == "logout":
        _out({"t": logout(args.session_key)})
    elif args.command == "count":
        _out(count_events(args.job_id, args.type))
    else:
        job_id = args.job_id
        if args.new_job_for:
            job_id = _new_job(args.new_job_for)
            _out({"job": job_id})
        assert job_id, "publish needs a job id or --new-job-for"
        publish_events(job_id, args.count, args.interval, args.size, args.finish)
    return 0

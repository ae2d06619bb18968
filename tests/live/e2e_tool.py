"""Helper processes of ``test_e2e_daphne.py`` (``DJANGO_SETTINGS_MODULE=tests.live.e2e_settings``).

``python -m tests.live e2e setup --jobs N``
    Migrate the shared database, create an owner and another user, a logged-in session for
    each, and N pending jobs of the owner; print them as one JSON object.

``python -m tests.live e2e logout SESSION_KEY``
    Delete a session, as a logout elsewhere would.

``python -m tests.live e2e publish JOB_ID --steps N --interval S``
    Publish a job from this separate process: ``job.start()``, N ``step`` events (with their
    publish time in the data), ``job.succeed()``. After each event is committed, print one JSON
    line ``{"seq": ..., "type": ..., "t": <time.time() after commit>}``.

``python -m tests.live e2e history JOB_ID --events N --data-bytes B [--finish]``
    Store a long history at once (``bulk_create``, nothing sent to streams): ``started``, N
    ``step`` events whose data holds B padding characters, and with ``--finish`` a
    ``succeeded`` event; the job is left running, or succeeded. Print ``{"last_seq": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.live.e2e_settings")
    import django

    django.setup()


def _session_for(user: Any) -> str:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    assert session.session_key is not None
    return session.session_key


def setup(jobs: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from django_sse.models import Job

    call_command("migrate", verbosity=0, interactive=False)
    User = get_user_model()
    owner = User.objects.create_user("owner", password="owner-password")
    other = User.objects.create_user("other", password="other-password")
    job_ids = [str(Job.objects.create(owner=owner, name=f"e2e {i}").pk) for i in range(jobs)]
    return {
        "owner_session": _session_for(owner),
        "owner_session_to_revoke": _session_for(owner),
        "other_session": _session_for(other),
        "jobs": job_ids,
    }


def logout(session_key: str) -> None:
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore(session_key)
    assert session.exists(session_key), f"no session {session_key}"
    session.delete()


def _report(event: Any) -> None:
    line = {"seq": event.seq, "type": event.type, "t": time.time()}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def publish_job(job_id: str, steps: int, interval: float) -> None:
    from django_sse import publish
    from django_sse.models import Job

    job = Job.objects.get(pk=job_id)
    _report(job.start())
    time.sleep(interval)
    for i in range(steps):
        _report(publish(job, "step", {"i": i, "t": time.time()}))
        time.sleep(interval)
    _report(job.succeed({"steps": steps, "t": time.time()}))


def store_history(job_id: str, events: int, data_bytes: int, finish: bool) -> dict[str, Any]:
    from django.db import transaction
    from django.utils import timezone

    from django_sse.lifecycle import JobStatus
    from django_sse.models import Job, JobEvent

    pad = "x" * data_bytes
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        assert job.last_seq == 0, f"job {job_id} already has events"
        rows = [JobEvent(job=job, seq=1, type="started", data={})]
        rows += [
            JobEvent(job=job, seq=i + 2, type="step", data={"i": i, "pad": pad})
            for i in range(events)
        ]
        job.status = JobStatus.RUNNING
        if finish:
            result = {"steps": events}
            rows.append(
                JobEvent(job=job, seq=len(rows) + 1, type="succeeded", data={"result": result})
            )
            job.status = JobStatus.SUCCEEDED
            job.result = result
            job.finished_at = timezone.now()
        JobEvent.objects.bulk_create(rows, batch_size=500)
        job.last_seq = len(rows)
        job.save(update_fields=["last_seq", "status", "result", "finished_at", "updated_at"])
    return {"last_seq": job.last_seq}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.live e2e")
    commands = parser.add_subparsers(dest="command", required=True)
    setup_cmd = commands.add_parser("setup")
    setup_cmd.add_argument("--jobs", type=int, default=1)
    publish_cmd = commands.add_parser("publish")
    publish_cmd.add_argument("job_id")
    publish_cmd.add_argument("--steps", type=int, default=5)
    publish_cmd.add_argument("--interval", type=float, default=0.1)
    history_cmd = commands.add_parser("history")
    history_cmd.add_argument("job_id")
    history_cmd.add_argument("--events", type=int, required=True)
    history_cmd.add_argument("--data-bytes", type=int, default=100)
    history_cmd.add_argument("--finish", action="store_true")
    logout_cmd = commands.add_parser("logout")
    logout_cmd.add_argument("session_key")
    args = parser.parse_args(argv)
    _setup_django()
    if args.command == "setup":
        sys.stdout.write(json.dumps(setup(args.jobs)) + "\n")
    elif args.command == "logout":
        logout(args.session_key)
    elif args.command == "history":
        stored = store_history(args.job_id, args.events, args.data_bytes, args.finish)
        sys.stdout.write(json.dumps(stored) + "\n")
    else:
        publish_job(args.job_id, args.steps, args.interval)
    return 0

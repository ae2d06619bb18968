"""Database helper process (DJANGO_SETTINGS_MODULE=benchmarks.settings, BENCH_* env).

python -m benchmarks.djtool setup --jobs N     migrate, a user, a logged-in session, N jobs -> JSON
python -m benchmarks.djtool fill JOB N         store N "bench" events for JOB with fast SQL -> JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def setup(jobs: int) -> dict[str, Any]:
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command

    from django_sse.models import Job

    call_command("migrate", verbosity=0, interactive=False)
    user = get_user_model().objects.create_user("bench", password="bench-password")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    ids = [str(Job.objects.create(owner=user, name=f"bench {i}").pk) for i in range(jobs)]
    return {"session": session.session_key, "jobs": ids}


def fill(job_id: str, n: int) -> dict[str, Any]:
    from django.db import connection, transaction
    from django.utils import timezone

    from django_sse.models import Job, JobEvent

    job_field = JobEvent._meta.get_field("job").target_field  # the UUID primary key
    data_field = JobEvent._meta.get_field("data")
    date_field = JobEvent._meta.get_field("created_at")
    job_value = job_field.get_db_prep_value(job_id, connection)
    now = date_field.get_db_prep_value(timezone.now(), connection)
    table = JobEvent._meta.db_table
    started = time.perf_counter()
    t = time.time()
    with transaction.atomic(), connection.cursor() as cursor:
        batch = 10_000
        for start in range(0, n, batch):
            rows = [
                (
                    job_value,
                    i + 1,
                    "bench",
                    data_field.get_db_prep_value({"t": t, "i": i}, connection),
                    now,
                )
                for i in range(start, min(n, start + batch))
            ]
            cursor.executemany(
                f"INSERT INTO {table} (job_id, seq, type, data, created_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
        Job.objects.filter(pk=job_id).update(last_seq=n)
    return {"inserted": n, "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--jobs", type=int, default=20)
    f = sub.add_parser("fill")
    f.add_argument("job")
    f.add_argument("n", type=int)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    out = setup(args.jobs) if args.cmd == "setup" else fill(args.job, args.n)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

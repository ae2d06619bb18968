"""Admission, in process: how long N authorized streams opening together take to get their
replay (benchmark S9's question, without a server or a network in the way).

Each stream is an anonymous visitor's (a session of its own, saved in the database) on a job of
its own with a short history; every stream goes through the ASGI application the way the tests
drive it (``tests/utils.StreamClient``), all started at once. The figure is the time from the
first request to the moment every stream has its whole replay; the SQL queries run on the
stream database threads are counted too. It runs on the test settings (``tests/settings.py``,
so ``DATABASE_URL`` / ``REDIS_URL`` pick PostgreSQL and Redis) in a test database of its own,
created and dropped around the run.

    PYTHONPATH=. python -m benchmarks.admission --streams 2000 [--events 5] [--db-threads 4]

Profile it with ``py-spy record -o admission.svg -- python -m benchmarks.admission ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from typing import Any


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()


async def _admit(job_ids: list[Any], keys: list[str], events: int) -> tuple[float, list[float]]:
    from tests.utils import StreamClient, url

    loop = asyncio.get_running_loop()
    started = loop.time()
    firsts: list[float] = []

    async def one(job_id: Any, key: str) -> StreamClient:
        client = StreamClient(url(job_id), session_key=key)
        status = await client.start(timeout=600)
        assert status == 200, status
        await client.read_events(events, timeout=600)
        firsts.append(loop.time() - started)
        return client

    clients = await asyncio.gather(*(one(j, k) for j, k in zip(job_ids, keys, strict=True)))
    elapsed = loop.time() - started
    await asyncio.gather(*(client.disconnect(timeout=60) for client in clients))
    from django_sse.hub import close_hub

    await close_hub()
    return elapsed, firsts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--events", type=int, default=5, help="each job's history")
    parser.add_argument("--db-threads", type=int, default=None, help="DJANGO_SSE DB_THREADS")
    options = parser.parse_args(argv)
    _setup()

    from django.conf import settings
    from django.contrib.sessions.backends.db import SessionStore
    from django.test.utils import setup_databases, teardown_databases

    from django_sse.database import close_db_thread_connections
    from django_sse.identity import hash_session_key
    from django_sse.models import Job, JobEvent

    overrides = {"MAX_STREAMS_PER_IDENTITY": 10**6}
    if options.db_threads is not None:
        overrides["DB_THREADS"] = options.db_threads
    settings.DJANGO_SSE = {**settings.DJANGO_SSE, **overrides}
    old = setup_databases(verbosity=0, interactive=False)
    try:
        keys = []
        for _ in range(options.streams):
            session = SessionStore()
            session["visited"] = True
            session.save()
            assert session.session_key is not None
            keys.append(session.session_key)
        jobs = Job.objects.bulk_create(
            [Job(session_hash=hash_session_key(key), last_seq=options.events) for key in keys]
        )
        JobEvent.objects.bulk_create(
            [
                JobEvent(job=job, seq=seq, type="step", data={"n": seq})
                for job in jobs
                for seq in range(1, options.events + 1)
            ]
        )
        elapsed, firsts = asyncio.run(_admit([job.pk for job in jobs], keys, options.events))
        close_db_thread_connections()
    finally:
        teardown_databases(old, verbosity=0)
    engine = str(settings.DATABASES["default"]["ENGINE"]).rsplit(".", 1)[-1]
    firsts.sort()
    p99 = firsts[min(len(firsts) - 1, int(len(firsts) * 0.99))]
    print(
        f"{options.streams} streams on {engine} (DB_THREADS={options.db_threads or 'default'}): "
        f"all replayed in {elapsed:.2f} s ({options.streams / elapsed:.0f} opens/s); "
        f"replay complete p50 {statistics.median(firsts):.2f} s, p99 {p99:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

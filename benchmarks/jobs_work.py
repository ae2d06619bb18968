"""What the publishers of our app do (in a worker process or a thread inside the server)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.schedule import run_sync


def publish_events(
    job_id: str,
    n: int,
    rate: float,
    max_seconds: float,
    credit: Callable[[], int] | None = None,
) -> dict[str, Any]:
    from django_sse import publish
    from django_sse.models import Job

    job = Job.objects.get(pk=job_id)
    cpu0 = time.process_time()
    stats = run_sync(
        n, rate, lambda i, t: publish(job, "bench", {"t": t, "i": i}), max_seconds, credit
    )
    stats["publisher_cpu_s"] = time.process_time() - cpu0
    return stats


def progress_loop(job_id: str, n: int) -> dict[str, Any]:
    """S6: a task's tight loop of ``n`` ``job.set_progress`` calls, then ``flush_progress``."""
    from django_sse.models import Job, JobEvent

    job = Job.objects.get(pk=job_id)
    rows_before = JobEvent.objects.filter(job_id=job.pk).count()
    t0 = time.perf_counter()
    wall0 = time.time()
    written = 0
    for i in range(1, n + 1):
        if job.set_progress(i, n, "working") is not None:
            written += 1
    loop_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    flushed = job.flush_progress()
    flush_s = time.perf_counter() - t1
    flush_end = time.time()
    rows = JobEvent.objects.filter(job_id=job.pk).count() - rows_before
    return {
        "done": True,
        "errors": 0,
        "n": n,
        "loop_seconds": loop_s,
        "flush_seconds": flush_s,
        "task_seconds": loop_s + flush_s,
        "writes_during_loop": written,
        "flush_wrote": flushed is not None,
        "rows_written": rows,
        "t_start": wall0,
        "flush_end": flush_end,
    }

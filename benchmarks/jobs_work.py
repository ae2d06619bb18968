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


def publish_bulk(job_id: str, n: int, batch: int, max_seconds: float) -> dict[str, Any]:
    """S2b: ``n`` events through ``publish_many``, ``batch`` to a call, as fast as it goes.

    Each call returns once its transaction committed, so events / (end of the last call -
    start of the first) is the persisted rate. Every event of a batch carries the time its
    call started (its latency includes the whole batch's write).
    """
    from django_sse import publish_many
    from django_sse.models import Job

    job = Job.objects.get(pk=job_id)
    cpu0 = time.process_time()
    deadline = time.monotonic() + max_seconds
    costs: list[float] = []
    errors: list[str] = []
    published = 0
    t_first = time.time()
    for start in range(0, n, batch):
        if time.monotonic() > deadline:
            errors.append(f"stopped at {start}: over {max_seconds} s")
            break
        t = time.time()
        try:
            publish_many(
                job, [("bench", {"t": t, "i": i}) for i in range(start, min(n, start + batch))]
            )
        except Exception as exc:
            errors.append(repr(exc))
            continue
        costs.append(time.time() - t)
        published += min(n, start + batch) - start
    t_end = time.time()
    costs.sort()
    return {
        "n": n,
        "batch": batch,
        "rate_asked": 0.0,
        "published": published,
        "errors": len(errors),
        "error_sample": errors[:3],
        "t0": t_first,
        "t_first": t_first,
        "t_last": t_end,
        "rate_achieved": published / (t_end - t_first) if t_end > t_first else None,
        "persisted_events_per_s": published / (t_end - t_first) if t_end > t_first else None,
        "batch_call_p50_ms": 1000 * costs[len(costs) // 2] if costs else None,
        "batch_call_p99_ms": 1000 * costs[min(len(costs) - 1, int(0.99 * len(costs)))]
        if costs
        else None,
        "publisher_cpu_s": time.process_time() - cpu0,
        "done": True,
    }


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

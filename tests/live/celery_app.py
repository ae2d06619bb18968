"""The Celery app of ``test_celery.py``: a worker that runs a job and publishes its progress.

Run by the test as ``celery -A tests.live.celery_app worker --pool=solo -Q QUEUE`` with
``DJANGO_SETTINGS_MODULE=tests.live.e2e_settings`` and the run's database and channel-layer prefix
in the environment, so that the worker, the Daphne server and the test share both. The broker is
Redis (``DJANGO_SSE_CELERY_BROKER``, a database number of its own) with a per-run key prefix
(``DJANGO_SSE_CELERY_KEYPREFIX``) and queue (``DJANGO_SSE_CELERY_QUEUE``); there is no result
backend. Celery's Django fix-up calls ``django.setup()`` when the worker starts; the tasks make
sure of it again before touching a model, and nothing here imports models at module level.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

BROKER_ENV = "DJANGO_SSE_CELERY_BROKER"
QUEUE_ENV = "DJANGO_SSE_CELERY_QUEUE"
KEYPREFIX_ENV = "DJANGO_SSE_CELERY_KEYPREFIX"

RUN_JOB = "tests.live.celery_app.run_job"
PING = "tests.live.celery_app.ping"


def make_app(broker: str, queue: str, keyprefix: str, **kwargs: Any) -> Any:
    """A Celery app on ``broker`` whose tasks go to ``queue``; ``kwargs`` go to ``Celery()``
    (the test process passes ``fixups=[]``: it only sends)."""
    app = Celery("tests.live.celery_app", broker=broker, **kwargs)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        broker_transport_options={"global_keyprefix": keyprefix},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3,
        worker_prefetch_multiplier=1,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


app = make_app(
    os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/3"),
    os.environ.get(QUEUE_ENV, "django_sse_tests"),
    os.environ.get(KEYPREFIX_ENV, "django_sse_tests:"),
)


def _setup_django() -> None:
    from django.apps import apps

    if not apps.ready:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.live.e2e_settings")
        import django

        django.setup()


@app.task(name=PING)  # type: ignore[untyped-decorator]
def ping() -> str:
    """Warms the worker up: Django set up, a database connection, the broker's ack path."""
    _setup_django()
    from django_sse.models import Job

    return f"{Job.objects.count()} jobs"


@app.task(name=RUN_JOB)  # type: ignore[untyped-decorator]
def run_job(job_id: str, steps: int, log_every: int, pause: float) -> dict[str, Any]:
    """What a site's task does: start, many coalesced progress calls, a few log events,
    succeed. Times go into the data so that the test can measure delivery."""
    _setup_django()
    from django_sse import publish
    from django_sse.models import Job

    job = Job.objects.get(pk=job_id)
    job.start()
    logs = 0
    for i in range(1, steps + 1):
        job.set_progress(i, steps, f"Step {i}")
        if i % log_every == 0:
            publish(job, "log", {"line": f"{i} steps done", "t": time.time()})
            logs += 1
        time.sleep(pause)
    result = {"steps": steps, "logs": logs, "t": time.time()}
    job.succeed(result)
    return result

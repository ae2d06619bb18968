"""A real Celery worker publishes a job; a stream on a Daphne server follows it over Redis.

The worker (``celery -A tests.live.celery_app worker --pool=solo``, in a subprocess), the Daphne
server and the test share a PostgreSQL database made for this run and a Redis channel-layer
prefix. The broker is the local Redis too, on a database number of its own with a per-run key
prefix and queue. The server's database poll is slowed to 30 s: events that arrive promptly came
through the layer. The task is sent from this process with the Celery app's ``send_task``.

Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest

from tests.live import services
from tests.live.celery_app import PING, RUN_JOB, make_app
from tests.live.e2e_support import (
    TRACEBACK_OR_ERROR,
    LoggedServer,
    daphne,
    pg_connect,
    pg_url,
    process_env,
    run_database,
)
from tests.live.processes import (
    ROOT,
    delete_redis_keys,
    run_id,
    run_module,
    stop_process,
    wait_until,
)
from tests.live.streams import client, open_stream

# Always PostgreSQL (and Redis where needed), whatever DATABASE_URL / REDIS_URL say.
pytestmark = [pytest.mark.e2e, pytest.mark.services, pytest.mark.pgredis]

# Only the layer can deliver within the test's deadlines.
POLL_SECONDS = 30.0
HEARTBEAT_SECONDS = 2.0
MAX_LATENCY = 1.5
STEPS = 300
# 30 log events, each preceded by the pending progress value: a burst of about 65 events.
LOG_EVERY = 10
PAUSE = 0.005
# New Redis connections (server-wide, so other clients of this Redis count too) while the task
# runs, per event published: one connection per event (a naive async_to_sync(group_send) per
# event measured 20 for 20 sends) is far above it; the app reuses the publisher's connection.
MAX_CONNECTIONS_PER_EVENT = 0.25


def _broker_url(redis_url: str) -> str:
    """The layer's Redis server, on a database number of its own (3, or 4 if the layer has 3)."""
    parts = urlparse(redis_url)
    layer_db = parts.path.strip("/") or "0"
    return urlunparse(parts._replace(path="/4" if layer_db == "3" else "/3"))


@dataclass
class CeleryRun:
    env: dict[str, str]
    db_name: str
    redis_url: str
    server: LoggedServer
    worker: subprocess.Popen[bytes]
    worker_log: Path
    sender: Any
    queue: str
    jobs: list[str]

    def worker_output(self) -> str:
        return self.worker_log.read_text("utf-8", "replace")

    def wait_for_worker(self, pattern: str, timeout: float) -> re.Match[str] | None:
        def found() -> re.Match[str] | None:
            if self.worker.poll() is not None:
                raise AssertionError(f"the worker exited:\n{self.worker_output()}")
            return re.search(pattern, self.worker_output())

        return wait_until(found, timeout, interval=0.1)


@pytest.fixture(scope="module")
def celery_run() -> Iterator[CeleryRun]:
    services.require("PostgreSQL", services.DATABASE_URL, 5432)
    redis_url = services.require_redis()
    rid = run_id()
    broker = _broker_url(redis_url)
    queue = f"django_sse_celery_{rid}"
    keyprefix = f"django_sse_celery_{rid}:"
    layer_prefix = f"django_sse_celery_layer_{rid}"
    log_dir = Path(tempfile.mkdtemp(prefix="django_sse_celery_"))
    with contextlib.ExitStack() as stack:
        stack.callback(delete_redis_keys, broker, f"{keyprefix}*")
        stack.callback(delete_redis_keys, redis_url, f"{layer_prefix}*")
        db_name = stack.enter_context(run_database("django_sse_celery"))
        env = process_env(
            DJANGO_SETTINGS_MODULE="tests.live.e2e_settings",
            DATABASE_URL=pg_url(),
            REDIS_URL=redis_url,
            DJANGO_SSE_E2E_DB=db_name,
            DJANGO_SSE_E2E_PREFIX=layer_prefix,
            DJANGO_SSE_E2E_POLL_SECONDS=str(POLL_SECONDS),
            DJANGO_SSE_E2E_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
            DJANGO_SSE_CELERY_BROKER=broker,
            DJANGO_SSE_CELERY_QUEUE=queue,
            DJANGO_SSE_CELERY_KEYPREFIX=keyprefix,
        )
        made = json.loads(run_module(env, "tests.live", "e2e", "setup", "--jobs", "1"))
        server = stack.enter_context(daphne(env, made["owner_session"], made["other_session"]))
        worker_log = log_dir / "worker.log"
        with open(worker_log, "wb") as log:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tests.live.celery_app",
                    "worker",
                    "--pool=solo",
                    "--concurrency=1",
                    "-Q",
                    queue,
                    "-n",
                    f"{queue}@127.0.0.1",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-l",
                    "INFO",
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        stack.callback(stop_process, worker, 10)
        sender = make_app(broker, queue, keyprefix, fixups=[], set_as_current=False)
        stack.callback(sender.close)
        run = CeleryRun(
            env, db_name, redis_url, server, worker, worker_log, sender, queue, made["jobs"]
        )
        assert run.wait_for_worker(r" ready\.", 30), run.worker_output()
        yield run
    # After the worker stopped: its log is kept until here for a failing test's message.
    shutil.rmtree(log_dir, ignore_errors=True)


def _connections_received(connection: Any) -> int:
    return int(connection.info("stats")["total_connections_received"])


def test_celery_worker_job_streams_over_redis(celery_run: CeleryRun) -> None:
    import redis

    run = celery_run
    server = run.server
    job_id = run.jobs[0]
    offset = server.log_offset()
    # Warm the worker up (Django, its database connection, the broker's ack path) and the
    # sender's broker connection, so that the count below sees the task's own connections.
    run.sender.send_task(PING, queue=run.queue)
    assert run.wait_for_worker(rf"Task {re.escape(PING)}\[[^\]]+\] succeeded", 20), (
        run.worker_output()
    )
    stats = redis.Redis.from_url(run.redis_url, socket_timeout=5)
    try:
        with client() as http:
            stream = open_stream(http, server.url(job_id), server.owner_session)
            try:
                assert stream.response.status_code == 200
                stream.read_first_chunk()
                before = _connections_received(stats)
                sent_at = time.time()
                run.sender.send_task(
                    RUN_JOB, args=[job_id, STEPS, LOG_EVERY, PAUSE], queue=run.queue
                )
                stream.read_to_end(timeout=30)
                ended_after = time.time() - sent_at
            finally:
                stream.close()
        done = run.wait_for_worker(
            rf"Task {re.escape(RUN_JOB)}\[[^\]]+\] succeeded in [0-9.]+s: (.*)", 20
        )
        assert done, run.worker_output()
        after = _connections_received(stats)
    finally:
        stats.close()

    events = stream.parser.events
    seqs = stream.seqs
    types = [e.type for e in events]
    datas = [json.loads(e.data) for e in events]
    n = len(events)
    assert seqs == list(range(1, n + 1)), f"not 1..N once each: {seqs}"
    with pg_connect(run.db_name) as conn:
        stored = [
            int(seq)
            for (seq,) in conn.execute(
                "SELECT seq FROM django_sse_jobevent WHERE job_id = %s ORDER BY seq",
                [uuid.UUID(job_id)],
            ).fetchall()
        ]
    # Everything the worker published reached the stream.
    assert stored == seqs
    assert types[0] == "started"
    assert types[-1] == "succeeded"
    assert set(types) == {"started", "progress", "log", "succeeded"}, types
    assert types.count("log") == STEPS // LOG_EVERY
    progress = [d for t, d in zip(types, datas, strict=True) if t == "progress"]
    currents = [p["current"] for p in progress]
    assert currents == sorted(currents), currents
    # Coalesced: far fewer rows than calls, and the final value arrives before "succeeded".
    assert len(progress) < STEPS / 3, len(progress)
    # (At step 300 a log follows the progress call: the pending value is written before it.)
    assert progress[-1] == {"current": STEPS, "total": STEPS, "message": f"Step {STEPS}"}
    last_progress = max(i for i, t in enumerate(types) if t == "progress")
    assert last_progress < types.index("succeeded")
    result = datas[-1]["result"]
    assert result["steps"] == STEPS
    assert result["logs"] == STEPS // LOG_EVERY

    # Layer speed: each timed event (the logs and the result) within MAX_LATENCY of its
    # commit, and the whole job long before the 30 s poll could have found anything.
    lags = {
        seq: round(stream.arrivals[seq] - d.get("t", d.get("result", {}).get("t")), 3)
        for seq, t, d in zip(seqs, types, datas, strict=True)
        if t in {"log", "succeeded"}
    }
    assert max(lags.values()) <= MAX_LATENCY, lags
    assert ended_after < POLL_SECONDS / 2, ended_after

    new_connections = after - before
    print(
        f"\n[celery] events published={len(stored)} received={n} lost=0 duplicated=0; "
        f"progress rows {len(progress)} for {STEPS} calls; max lag {max(lags.values()):.3f} s; "
        f"job done {ended_after:.2f} s after send_task; new Redis connections during the "
        f"task: {new_connections}"
    )
    assert new_connections <= MAX_CONNECTIONS_PER_EVENT * n, (new_connections, n)

    worker_output = run.worker_output()
    assert not TRACEBACK_OR_ERROR.search(worker_output), worker_output
    assert "Could not push" not in worker_output, worker_output
    assert wait_until(lambda: "reason=job finished" in server.log(offset), 3)
    server.assert_clean(offset)
    assert "WARNING django_sse" not in server.log(offset), server.log(offset)

"""PostgreSQL without Redis: channels_postgres (LISTEN/NOTIFY) as the channel layer, end to end.

Daphne servers and publisher processes on one PostgreSQL database, the layer configured as
``tests/live/pg_layer_settings.py`` (and docs/deployment.rst) say. Where delivery must come from the
layer, the database poll is slowed to 30 s, so that an event arriving within a second can only
have come through LISTEN/NOTIFY. The restart test runs a PostgreSQL server of its own on a spare
port and stops and starts it (never the shared one).

Needs PostgreSQL and channels_postgres (fails under CI=true, skips elsewhere); the latency
comparison also needs Redis. Each test prints its figures (``pytest -rP`` or ``-s`` shows them).
Every loop is bounded in count and time, all traffic goes to 127.0.0.1, and every process
started is stopped at teardown.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live.pg_layer_support import (
    SERVER_ERRORS,
    PostgresServer,
    layer_connections,
    layer_env,
    make_pg_site,
    read_times,
    require_channels_postgres,
    require_postgres,
    start_padded,
)
from tests.live.processes import ROOT, close_pipes, run_module, wait_until
from tests.live.services import require_redis
from tests.live.topology_support import (
    Daphne,
    Processes,
    Publisher,
    Site,
    Subscriber,
    join_subscribers,
    lags_by_seq,
    latencies,
    start_servers,
    start_subscribers,
    summary,
)

# Each test starts servers and helper processes (Django starts in each): more than the default
# 60 s on a busy machine.
pytestmark = [pytest.mark.e2e, pytest.mark.pglayer, pytest.mark.timeout(180)]

JOBS = 8
# Only the layer can deliver within a second when the database is checked every 30 s.
SLOW_POLL_SECONDS = 30.0
LAYER_LATENCY = 1.0
HEARTBEAT_SECONDS = 2.0
# The data of an event too large for one NOTIFY (8000 bytes): the layer sends its row id only.
LARGE_DATA_BYTES = 60_000


@pytest.fixture(scope="module")
def log_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="django_sse_pgl_"))
    yield path
    if os.environ.get("DJANGO_SSE_TOPOLOGY_KEEP_LOGS"):
        print(f"logs kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def site(log_dir: Path) -> Iterator[Site]:
    require_channels_postgres()
    with make_pg_site(require_postgres(), JOBS, log_dir) as made:
        yield made


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Processes of one test, stopped when it ends."""
    started = Processes()
    yield started
    started.stop_all()


def assert_clean(server: Daphne, since: int = 0) -> None:
    text = server.log(since)
    assert not SERVER_ERRORS.search(text), f"server log has errors:\n{text}"
    assert server.alive(), f"server died:\n{text}"


def test_two_servers_get_a_workers_events_at_layer_speed(site: Site, processes: Processes) -> None:
    """3 subscribers on each of two servers get every event of a job published by a third
    process, in order, once, within a second while the database poll is 30 s: through
    LISTEN/NOTIFY. An event of 60 KB (over NOTIFY's 8000 bytes) arrives the same way. Each
    server process holds the layer's connections counted here."""
    app_name = f"django_sse_pgl_pair_{site.run_id}"
    env = layer_env(
        site,
        poll_seconds=SLOW_POLL_SECONDS,
        heartbeat_seconds=HEARTBEAT_SECONDS,
        app_name=app_name,
    )
    servers = start_servers(processes, env, site.log_dir, ["pair-a", "pair-b"])
    job = site.take_job()
    steps = 24
    total = steps + 2
    subscribers = [
        Subscriber(f"{server.log_path.stem}-{i}", [server.url(job)], site.owner_session)
        for server in servers
        for i in range(3)
    ]
    try:
        start_subscribers(subscribers)
        time.sleep(0.3)  # the first chunk goes out just before the hub joins the group
        idle_connections = layer_connections(site, app_name)
        published = Publisher(processes, env, job, steps, interval=0.1).finish(timeout=30)
        join_subscribers(subscribers, timeout=15)
    finally:
        for subscriber in subscribers:
            subscriber.stop()

    assert published.returncode == 0, published.stderr
    assert "Could not push" not in published.stderr, published.stderr
    assert sorted(published.times) == list(range(1, total + 1))
    all_lags: list[float] = []
    for subscriber in subscribers:
        assert len(subscriber.connections) == 1, subscriber.describe()
        assert subscriber.seqs == list(range(1, total + 1)), subscriber.describe()
        by_seq = lags_by_seq(subscriber, published.times, range(1, total + 1))
        late = {s: round(lag, 3) for s, lag in by_seq.items() if lag >= LAYER_LATENCY}
        assert not late, f"{subscriber.label}: later than {LAYER_LATENCY} s: {late}"
        all_lags += by_seq.values()
    print(
        f"[postgres layer] 6 subscribers on 2 servers, {total} events from a worker process: "
        f"latency {summary(all_lags)}; layer connections of the 2 idle servers: "
        f"{idle_connections}"
    )
    assert idle_connections >= 2, "each server listens on a connection of its own"
    for server in servers:
        assert server.log().count(f"Stream opened: job={job} ") == 3, server.log()
        assert_clean(server)


def _post_cancel(server: Daphne, job: str, session: str) -> int:
    token = "t" * 32  # a CSRF secret of the right shape, sent as cookie and header
    response = httpx.post(
        f"http://127.0.0.1:{server.port}/sse/jobs/{job}/cancel/",
        headers={
            "Cookie": f"sessionid={session}; csrftoken={token}",
            "X-CSRFToken": token,
        },
        timeout=10,
        trust_env=False,
    )
    return response.status_code


def test_large_events_and_a_servers_own_publish_at_layer_speed(
    site: Site, processes: Processes
) -> None:
    """Events of 60 KB (NOTIFY carries 8000 bytes: the layer sends the row's id and the
    receiver reads the message from its table) and an event published inside a server process
    (a cancel request: the layer's pool, opened on the hub's event loop, is then used from the
    publishing thread's loop) reach the streams of both servers within a second."""
    env = layer_env(site, poll_seconds=SLOW_POLL_SECONDS, heartbeat_seconds=HEARTBEAT_SECONDS)
    a, b = start_servers(processes, env, site.log_dir, ["large-a", "large-b"])
    job = site.take_job()
    subscribers = [
        Subscriber(f"{server.log_path.stem}-{i}", [server.url(job)], site.owner_session)
        for server in (a, b)
        for i in range(2)
    ]
    try:
        start_subscribers(subscribers)
        time.sleep(0.3)
        run_module(env, "tests.live", "fault", "commit", job, "--start")
        large = processes.add(start_padded(env, job, LARGE_DATA_BYTES, count=3))
        out, err = large.communicate(timeout=30)
        assert large.returncode == 0, err
        times = read_times(out)
        assert sorted(times) == [2, 3, 4]
        assert "Could not push" not in err, err
        # A request to server a publishes cancel_requested (event 5) from a's own process.
        wait_until(lambda: all(len(s.events) >= 4 for s in subscribers), timeout=10)
        before = time.time()
        assert _post_cancel(a, job, site.owner_session) == 202
        times[5] = before
        wait_until(lambda: all(len(s.events) >= 5 for s in subscribers), timeout=10)
        run_module(env, "tests.live", "fault", "commit", job, "--finish")
        join_subscribers(subscribers, timeout=15)
    finally:
        for subscriber in subscribers:
            subscriber.stop()

    figures = []
    for subscriber in subscribers:
        assert len(subscriber.connections) == 1, subscriber.describe()
        assert subscriber.seqs == [1, 2, 3, 4, 5, 6], subscriber.describe()
        types = [t for _, t, _ in subscriber.events]
        assert types[1:5] == ["padded"] * 3 + ["cancel_requested"], types
        by_seq = lags_by_seq(subscriber, times, times)
        late = {s: round(lag, 3) for s, lag in by_seq.items() if lag >= LAYER_LATENCY}
        assert not late, f"{subscriber.label}: later than {LAYER_LATENCY} s: {late}"
        figures.append(
            f"{subscriber.label}: 60 KB events {summary([by_seq[s] for s in (2, 3, 4)])}, "
            f"cancel from server a {by_seq[5] * 1000:.0f} ms"
        )
    print("[postgres layer] " + "\n  ".join(figures))
    for server in (a, b):
        assert_clean(server)


# The restart test: a 2 s poll (the fallback must deliver), heartbeats every second.
RESTART_POLL_SECONDS = 2.0
RESTART_HEARTBEAT_SECONDS = 1.0
OUTAGE_SECONDS = 3.0
FAST = 0.5  # "layer speed" against a 2 s poll


def test_database_restart_loses_nothing_then_streams_fall_back_to_the_poll(
    log_dir: Path, processes: Processes
) -> None:
    """PostgreSQL (a server of the test's own) restarted while streams are open: the streams
    end or wait, clients resume with Last-Event-ID, and every event arrives once, in order.

    channels_postgres 1.1.4 does not reopen its LISTEN connection once the database dropped it
    (its listener task dies, and ``receive()`` waits on a queue nobody fills), so until the
    server process restarts, events reach its streams through the database poll only: that is
    asserted here, as docs/deployment.rst says; if a later version recovers, this test fails
    and the docs need updating."""
    require_channels_postgres()
    postgres = PostgresServer(processes, log_dir)
    try:
        postgres.start()
        with make_pg_site(postgres.url, 1, log_dir) as site:
            _restart_scenario(site, postgres, processes)
    finally:
        processes.stop_all()
        postgres.remove()


def _restart_scenario(site: Site, postgres: PostgresServer, processes: Processes) -> None:
    env = layer_env(
        site, poll_seconds=RESTART_POLL_SECONDS, heartbeat_seconds=RESTART_HEARTBEAT_SECONDS
    )
    servers = start_servers(processes, env, site.log_dir, ["restart-a", "restart-b"])
    job = site.take_job()
    subscribers = [
        Subscriber(f"{server.log_path.stem}-{i}", [server.url(job)], site.owner_session)
        for server in servers
        for i in range(2)
    ]
    try:
        start_subscribers(subscribers)
        time.sleep(0.3)
        before = processes.add(start_padded(env, job, 10, count=10))
        out, err = before.communicate(timeout=30)
        assert before.returncode == 0, err
        times = read_times(out)
        assert sorted(times) == list(range(1, 11))
        wait_until(lambda: all(len(s.events) >= 10 for s in subscribers), timeout=10)
        stopped_at = time.time()
        postgres.stop()
        time.sleep(OUTAGE_SECONDS)  # the outage itself: what the test is about
        postgres.start()
        restarted_at = time.time()
        # Streams that ended on the outage come back (Last-Event-ID) once the database answers.
        wait_until(
            lambda: (
                all(s.connections[-1].status == 200 and s.is_alive() for s in subscribers)
                and time.time() > restarted_at + RESTART_POLL_SECONDS + 1
            ),
            timeout=20,
        )
        after = processes.add(start_padded(env, job, 10, count=30))
        out, err = after.communicate(timeout=40)
        assert after.returncode == 0, err
        times.update(read_times(out))
        run_module(env, "tests.live", "fault", "commit", job, "--finish")
        join_subscribers(subscribers, timeout=20)
    finally:
        for subscriber in subscribers:
            subscriber.stop()

    total = len(times) + 1
    assert sorted(times) == list(range(1, total)), sorted(times)
    pushes_failed = err.count("Could not push")
    late_seqs = range(11, total)
    figures = [
        f"[postgres layer] PostgreSQL restarted ({OUTAGE_SECONDS:.0f} s down), "
        f"{len(subscribers)} subscribers on 2 servers, poll {RESTART_POLL_SECONDS} s; "
        f"pushes the publisher after the restart logged as failed: {pushes_failed}"
    ]
    after_lags: list[float] = []
    for subscriber in subscribers:
        assert subscriber.duplicates == [], subscriber.describe()
        assert sorted(subscriber.seqs) == list(range(1, total + 1)), subscriber.describe()
        last = 0
        for connection in subscriber.connections:
            if connection.seqs:
                assert connection.seqs == list(range(last + 1, connection.seqs[-1] + 1))
                last = connection.seqs[-1]
        before_lags = latencies(subscriber, times, range(1, 11))
        assert max(before_lags) < FAST, (subscriber.label, before_lags)
        lags = latencies(subscriber, times, late_seqs)
        assert max(lags) < RESTART_POLL_SECONDS + 2.0, (subscriber.label, lags)
        after_lags += lags
        figures.append(
            f"  {subscriber.label}: {len(subscriber.connections)} connections; before "
            f"{summary(before_lags)}; after the restart {summary(lags)}"
        )
    for server in servers:
        log = server.log()
        assert server.alive(), log
        figures.append(
            f"  {server.log_path.stem}: {log.count('ends on a database error')} streams ended "
            f"on a database error, {log.count('deferred')} deferred, "
            f"{log.count('Receiving from the channel layer failed')} 'Receiving ... failed', "
            f"{log.count('Traceback')} tracebacks"
        )
    fast_share = sum(1 for lag in after_lags if lag < FAST) / len(after_lags)
    figures.append(
        f"  after the restart: {fast_share:.0%} of deliveries under {FAST} s "
        f"(outage from {stopped_at:.1f} to {restarted_at:.1f})"
    )
    print("\n".join(figures))
    # Through the poll alone, latencies spread over 0..2 s: the median is about 1 s.
    assert statistics.median(after_lags) > 0.4, (
        "events arrive at layer speed after a database restart: channels_postgres now "
        "reopens its LISTEN connection; update docs/deployment.rst. " + summary(after_lags)
    )


def test_workers_killed_mid_publish_lose_and_leak_nothing(site: Site, processes: Processes) -> None:
    """A worker killed (SIGKILL) with 5 events written in an open transaction: none of them is
    ever streamed. Another killed while it publishes an event every 50 ms: whatever it
    committed reaches the stream (an event it committed but never sent to the layer is read
    from the database when the next one arrives), and the next worker's events come at layer
    speed, though the database is checked only every 30 s."""
    env = layer_env(site, poll_seconds=SLOW_POLL_SECONDS, heartbeat_seconds=HEARTBEAT_SECONDS)
    [server] = start_servers(processes, env, site.log_dir, ["killed"])
    job = site.take_job()
    subscriber = Subscriber("killed", [server.url(job)], site.owner_session)
    try:
        start_subscribers([subscriber])
        time.sleep(0.3)
        # 1. Commits started + 2 events, then writes 5 more in a transaction and waits.
        die = ["die", job, "--start", "--committed", "2", "--events", "5"]
        dying = processes.add(
            subprocess.Popen(
                [sys.executable, "-m", "tests.live", "fault", *die],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        assert dying.stdout is not None
        readable, _, _ = select.select([dying.stdout], [], [], 30)
        assert readable, "the dying worker wrote nothing within 30 s"
        ready = json.loads(dying.stdout.readline())
        assert ready["committed"] == [1, 2, 3] and ready["seqs"] == [4, 5, 6, 7, 8]
        wait_until(lambda: len(subscriber.events) >= 3, timeout=10)
        os.kill(dying.pid, signal.SIGKILL)
        dying.wait(10)
        close_pipes(dying)
        # 2. Killed while it publishes.
        busy = processes.add(start_padded(env, job, 10, count=200, interval=0.05))
        wait_until(lambda: len(subscriber.events) >= 8, timeout=15)
        os.kill(busy.pid, signal.SIGKILL)
        busy.wait(10)
        busy_out, _ = busy.communicate(timeout=10)
        stored_after_kill, _status, last_seq = site.stored_seqs(job)
        # 3. The next worker.
        after = processes.add(start_padded(env, job, 10, count=5))
        out, err = after.communicate(timeout=30)
        assert after.returncode == 0, err
        times = read_times(out)
        run_module(env, "tests.live", "fault", "commit", job, "--finish")
        join_subscribers([subscriber], timeout=15)
    finally:
        subscriber.stop()

    assert dying.returncode == -signal.SIGKILL and busy.returncode == -signal.SIGKILL
    reported = read_times(busy_out)
    # The number the dead transaction had taken is taken again: nothing of it was stored.
    assert stored_after_kill == list(range(1, last_seq + 1))
    assert stored_after_kill[3] == 4 and set(reported) <= set(stored_after_kill)
    total = last_seq + len(times) + 1
    assert subscriber.seqs == list(range(1, total + 1)), subscriber.describe()
    assert len(subscriber.connections) == 1, subscriber.describe()
    types = [t for _, t, _ in subscriber.events]
    assert "doomed" not in types, types
    lags = latencies(subscriber, times, times)
    assert max(lags) < LAYER_LATENCY, lags
    print(
        f"[postgres layer] killed workers: 5 events of a killed transaction never streamed; "
        f"{last_seq - 3} committed by the worker killed mid-run ({len(reported)} reported "
        f"before the kill), all streamed; the next worker's {len(times)} events {summary(lags)}"
    )
    assert_clean(server)


def test_latency_beside_redis_pubsub(site: Site, processes: Processes) -> None:
    """Publish -> receipt latency through channels_postgres and through Redis pub/sub (the
    layer of the production topology), measured the same way: one server each, 3 subscribers,
    a worker publishing 60 events 50 ms apart, the database poll at 30 s."""
    redis_url = require_redis()
    envs = {
        "postgres": layer_env(
            site, poll_seconds=SLOW_POLL_SECONDS, heartbeat_seconds=HEARTBEAT_SECONDS
        ),
        "redis pubsub": site.env(
            poll_seconds=SLOW_POLL_SECONDS,
            heartbeat_seconds=HEARTBEAT_SECONDS,
            redis_url=redis_url,
            layer="pubsub",
            prefix="_pgl_compare",
        ),
    }
    figures: dict[str, list[float]] = {}
    for name, env in envs.items():
        [server] = start_servers(processes, env, site.log_dir, [name.replace(" ", "-")])
        job = site.take_job()
        subscribers = [
            Subscriber(f"{name}-{i}", [server.url(job)], site.owner_session) for i in range(3)
        ]
        try:
            start_subscribers(subscribers)
            time.sleep(0.3)
            publisher = processes.add(start_padded(env, job, 100, count=60, interval=0.05))
            out, err = publisher.communicate(timeout=40)
            assert publisher.returncode == 0, err
            times = read_times(out)
            run_module(env, "tests.live", "fault", "commit", job, "--finish")
            join_subscribers(subscribers, timeout=15)
        finally:
            for subscriber in subscribers:
                subscriber.stop()
        lags: list[float] = []
        for subscriber in subscribers:
            assert subscriber.seqs == list(range(1, len(times) + 2)), subscriber.describe()
            lags += latencies(subscriber, times, times)
        figures[name] = lags
        assert_clean(server)
    print(
        "[latency] publish -> receipt, 3 subscribers x 60 events, one Daphne server:\n"
        + "\n".join(f"  {name:12} {summary(lags)}" for name, lags in figures.items())
    )
    for name, lags in figures.items():
        assert max(lags) < LAYER_LATENCY, (name, summary(lags))

"""Deployment topologies, end to end: several Daphne processes on one PostgreSQL database and one
Redis, publishers in other processes, and faults (Redis stopped and restarted, a server killed).

Always on PostgreSQL + Redis (``DATABASE_URL`` / ``REDIS_URL``, else the defaults of
``tests.live.services``; a missing one fails under CI=true and skips elsewhere), with the layer
class of ``REDIS_LAYER`` (core by default, or pubsub); the idle-receive test always uses the core
layer. Where delivery must come from the layer, the database poll is slowed to 30 s, so that an
event arriving within a second can only have come through Redis. The Redis fault tests run a
redis-server of their own on a spare port (never the shared one) and stop and restart it.

Each test prints its figures (``pytest -rP`` or ``-s`` shows them). Every loop is bounded in
count and time, all traffic goes to 127.0.0.1, and every process started (servers, publishers,
the test's own redis-server) is killed at teardown. ``DJANGO_SSE_TOPOLOGY_KEEP_LOGS=1`` keeps
the server logs.
"""

from __future__ import annotations

import itertools
import re
import statistics
import time
from collections.abc import Iterator

import pytest

from tests.live.e2e_support import SERVER_ERRORS
from tests.live.processes import wait_until
from tests.live.topology_support import (
    LAYER,
    Daphne,
    Processes,
    Publisher,
    RedisServer,
    Site,
    Subscriber,
    join_subscribers,
    lags_by_seq,
    latencies,
    make_site,
    start_servers,
    start_subscribers,
    summary,
)

# pgredis: PostgreSQL + Redis whatever DATABASE_URL / REDIS_URL say (not in the SQLite run).
pytestmark = [pytest.mark.e2e, pytest.mark.pgredis]

JOBS = 8
# Only the layer can deliver within a second when the database is checked every 30 s.
SLOW_POLL_SECONDS = 30.0
LAYER_LATENCY = 1.0
HEARTBEAT_SECONDS = 2.0
# The Redis outage test: a short poll (the fallback must deliver), heartbeats every second.
OUTAGE_POLL_SECONDS = 2.0
OUTAGE_HEARTBEAT_SECONDS = 1.0
FAST = 0.5  # "layer speed" against a 2 s poll
# The hub retries a failing layer after at most 5 s (RETRY_DELAYS_SECONDS); redis-py and
# channels_redis add about a second to reconnect.
RECOVERY_ALLOWANCE = 6.5
# Longer than redis-py 8's default socket timeout (5 s) and the core layer's 5 s blocking pop.
IDLE_SECONDS = 7.0


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with make_site(jobs=JOBS) as made:
        yield made


@pytest.fixture(scope="module")
def module_processes(site: Site) -> Iterator[Processes]:
    processes = Processes()
    yield processes
    processes.stop_all()


@pytest.fixture
def processes(site: Site) -> Iterator[Processes]:
    """Processes of one test, stopped when it ends."""
    started = Processes()
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def pair(site: Site, module_processes: Processes) -> list[Daphne]:
    """Two servers on two ports, one database, one Redis, the database poll at 30 s."""
    env = site.env(poll_seconds=SLOW_POLL_SECONDS, heartbeat_seconds=HEARTBEAT_SECONDS)
    return start_servers(module_processes, env, site.log_dir, ["a", "b"])


def assert_clean(server: Daphne, since: int) -> None:
    text = server.log(since)
    assert not SERVER_ERRORS.search(text), f"server log has errors:\n{text}"
    assert server.alive(), f"server died:\n{text}"


def assert_exactly_once(subscriber: Subscriber, total: int) -> None:
    """Every event 1..total once (in order within each connection)."""
    assert subscriber.duplicates == [], subscriber.describe()
    assert sorted(subscriber.seqs) == list(range(1, total + 1)), subscriber.describe()
    for connection in subscriber.connections:
        assert connection.seqs == sorted(connection.seqs), subscriber.describe()
    assert subscriber.finished, subscriber.describe()


def assert_resumed_exactly(subscriber: Subscriber) -> None:
    """Each reconnection starts right after the last event received before it."""
    last = 0
    for connection in subscriber.connections:
        if connection.seqs:
            assert connection.last_event_id == (str(last) if last else None), subscriber.describe()
            assert connection.seqs[0] == last + 1, subscriber.describe()
            last = connection.seqs[-1]


def test_two_servers_share_one_publisher(
    site: Site, pair: list[Daphne], processes: Processes
) -> None:
    """3 subscribers on each of two servers get every event of a job published by a third
    process, in order, once, at layer speed; a subscriber cut mid-stream resumes on the other
    server with Last-Event-ID and gets exactly what it missed."""
    a, b = pair
    offsets = [server.log_offset() for server in pair]
    job = site.take_job()
    steps = 24
    total = steps + 2
    steady = [
        Subscriber(f"{name}{i}", [server.url(job)], site.owner_session)
        for name, server in (("a", a), ("b", b))
        for i in range(3)
    ]
    # Cut (TCP reset) after 6 events, back 0.5 s later on the other server.
    crossing = [
        Subscriber(
            name,
            [first.url(job), second.url(job)],
            site.owner_session,
            cut_after=6,
            reconnect_delay=0.5,
        )
        for name, first, second in (("a->b", a, b), ("b->a", b, a))
    ]
    everyone = steady + crossing
    try:
        start_subscribers(everyone)
        time.sleep(0.3)  # the first chunk goes out just before the hub subscription
        published = Publisher(processes, a.env, job, steps, interval=0.1).finish(timeout=30)
        join_subscribers(everyone, timeout=15)
    finally:
        for subscriber in everyone:
            subscriber.stop()

    assert published.returncode == 0, published.stderr
    assert sorted(published.times) == list(range(1, total + 1))
    all_lags: list[float] = []
    for subscriber in steady:
        assert len(subscriber.connections) == 1, subscriber.describe()
        assert subscriber.seqs == list(range(1, total + 1)), subscriber.describe()
        by_seq = lags_by_seq(subscriber, published.times, range(1, total + 1))
        late = {s: round(lag, 3) for s, lag in by_seq.items() if lag >= LAYER_LATENCY}
        assert not late, f"{subscriber.label}: later than {LAYER_LATENCY} s: {late}"
        all_lags += by_seq.values()
    print(f"[{LAYER}] 6 subscribers on 2 servers, {total} events: latency {summary(all_lags)}")

    for subscriber in crossing:
        assert_exactly_once(subscriber, total)
        assert_resumed_exactly(subscriber)
        cut, resumed = subscriber.connections[0], subscriber.connections[-1]
        assert cut.end == "cut by the client", subscriber.describe()
        assert len(subscriber.connections) == 2, subscriber.describe()
        assert resumed.url != cut.url and resumed.status == 200, subscriber.describe()
        assert subscriber.cut_at is not None
        missed = [
            seq for seq, t in published.times.items() if subscriber.cut_at < t < resumed.opened_at
        ]
        assert missed, f"nothing was published while {subscriber.label} was away"
        assert set(missed) <= set(resumed.seqs)
        # Once resumed, live events come from the other server's hub at layer speed.
        live = [seq for seq, t in published.times.items() if t > resumed.opened_at + 0.3]
        lags = latencies(subscriber, published.times, live)
        assert live and max(lags) < LAYER_LATENCY, (live, lags)
        print(
            f"[{LAYER}] {subscriber.label}: got {cut.seqs[0]}..{cut.seqs[-1]}, cut, "
            f"{len(missed)} published while away, resumed with Last-Event-ID "
            f"{resumed.last_event_id}: {resumed.seqs[0]}..{resumed.seqs[-1]}, "
            f"duplicates {len(subscriber.duplicates)}, live latency {summary(lags)}"
        )

    for server, offset in zip(pair, offsets, strict=True):
        log = server.log(offset)
        assert log.count(f"Stream opened: job={job} ") == 5, log
        assert_clean(server, offset)


def test_redis_outage_falls_back_to_the_database_and_recovers(
    site: Site, processes: Processes
) -> None:
    """Redis stopped while streams are open and a job publishes: publishing goes on, streams
    stay open and get every event through the database poll; Redis restarted on the same port:
    delivery is back at layer speed without restarting the servers."""
    redis = RedisServer(processes, site.log_dir)
    redis.start()
    env = site.env(
        poll_seconds=OUTAGE_POLL_SECONDS,
        heartbeat_seconds=OUTAGE_HEARTBEAT_SECONDS,
        redis_url=redis.url,
        prefix="_outage",
    )
    servers = start_servers(processes, env, site.log_dir, ["outage-a", "outage-b"])
    job = site.take_job()
    steps, interval = 160, 0.1
    total = steps + 2
    subscribers = [
        Subscriber(f"{name}{i}", [server.url(job)], site.owner_session)
        for name, server in (("a", servers[0]), ("b", servers[1]))
        for i in range(2)
    ]
    first = subscribers[0]
    try:
        start_subscribers(subscribers)
        time.sleep(0.3)
        publisher = Publisher(processes, env, job, steps, interval)
        # Phase 1: Redis up, about 2 s of events.
        wait_until(lambda: len(first.events) >= 20, timeout=15)
        assert len(first.events) >= 20, first.describe()
        stopped_at = time.time()
        redis.stop()
        # Phase 2: Redis down for 5 s.
        time.sleep(5.0)
        redis.start()
        restarted_at = time.time()
        # Phase 3: Redis back; the publisher goes on for about 9 s more.
        published = publisher.finish(timeout=40)
        join_subscribers(subscribers, timeout=15)
    finally:
        for subscriber in subscribers:
            subscriber.stop()

    # Publishing kept working: exit 0, every event recorded, failed pushes only logged.
    assert published.returncode == 0, published.stderr
    assert sorted(published.times) == list(range(1, total + 1)), published.stderr
    assert site.stored_seqs(job) == (list(range(1, total + 1)), "succeeded", total)
    warned = [
        int(n)
        for n in re.findall(r"WARNING django_sse Could not push event #(\d+)", published.stderr)
    ]
    assert "Traceback" not in published.stderr and " ERROR " not in published.stderr, (
        published.stderr
    )
    assert warned, published.stderr

    phases = {
        "1 redis up": [s for s, t in published.times.items() if t < stopped_at],
        "2 redis down": [s for s, t in published.times.items() if stopped_at <= t < restarted_at],
        "3 redis back": [s for s, t in published.times.items() if t >= restarted_at],
    }
    up, down, back = phases.values()
    figures = [
        f"[{LAYER}] Redis outage, {total} events, {len(subscribers)} subscribers on 2 servers, "
        f"poll {OUTAGE_POLL_SECONDS} s"
    ]
    for phase, seqs in phases.items():
        lags = [lag for sub in subscribers for lag in latencies(sub, published.times, seqs)]
        received = sum(1 for sub in subscribers for seq in sub.seqs if seq in set(seqs))
        lost = sum(len(sub.missing(seqs)) for sub in subscribers)
        dup = sum(1 for sub in subscribers for seq in sub.duplicates if seq in set(seqs))
        figures.append(
            f"  phase {phase}: published {len(seqs)} (#{seqs[0]}..#{seqs[-1]}), received "
            f"{received} of {len(seqs) * len(subscribers)}, lost {lost}, duplicated {dup}, "
            f"latency {summary(lags)}"
        )
    figures.append(
        f"  pushes the publisher logged as failed: {len(warned)} (#{min(warned, default=0)}"
        f"..#{max(warned, default=0)})"
    )
    # Phase 3 per subscriber: when it was last slow, and how it is once the hub reconnected.
    recovery: dict[str, tuple[dict[int, float], list[int]]] = {}
    for subscriber in subscribers:
        by_seq = lags_by_seq(subscriber, published.times, back)
        slow = [seq for seq in back if by_seq.get(seq, 99) >= FAST]
        settled = [seq for seq in back if published.times[seq] >= restarted_at + RECOVERY_ALLOWANCE]
        recovery[subscriber.label] = (by_seq, settled)
        beats = [t for t in subscriber.pings if stopped_at <= t <= restarted_at]
        last_slow = published.times[slow[-1]] - restarted_at if slow else 0.0
        fast_share = sum(1 for s in back if by_seq.get(s, 99) < FAST) / len(back)
        after = summary([by_seq[s] for s in settled if s in by_seq])
        figures.append(
            f"  {subscriber.label}: {len(beats)} heartbeats during the outage; phase 3: last "
            f"event slower than {FAST} s published {last_slow:.1f} s after the restart, "
            f"{fast_share:.0%} under {FAST} s; from {RECOVERY_ALLOWANCE} s on: {after}"
        )
    for server in servers:
        log = server.log()
        figures.append(
            f"  {server.log_path.stem}: {log.count('Receiving from the channel layer failed')} "
            f"'Receiving ... failed', {log.count('works again')} 'works again', "
            f"{log.count('Could not join the group')} 'Could not join the group', "
            f"{log.count('Traceback')} tracebacks (channels_redis)"
        )
    print("\n".join(figures))

    assert len(up) >= 15 and len(down) >= 30 and len(back) >= 60, phases
    # Every push made while Redis was down failed, and was logged, not raised; none after.
    assert set(warned) >= set(down[1:-1]), (warned, down)
    assert set(warned) <= set(range(down[0] - 2, down[-1] + 3)), (warned, down)
    for subscriber in subscribers:
        # Open the whole time, every event once, in order.
        assert len(subscriber.connections) == 1, subscriber.describe()
        assert subscriber.seqs == list(range(1, total + 1)), subscriber.describe()
        # Heartbeats kept coming while Redis was down.
        beats = [t for t in subscriber.pings if stopped_at <= t <= restarted_at]
        assert len(beats) >= 3, (subscriber.label, beats)
        gaps = [y - x for x, y in itertools.pairwise(subscriber.pings)]
        assert max(gaps) < 3 * OUTAGE_HEARTBEAT_SECONDS, (subscriber.label, gaps)
        # Phase 1 at layer speed; phase 2 through the poll, within its period.
        assert max(latencies(subscriber, published.times, up)) < FAST, subscriber.label
        polled = latencies(subscriber, published.times, down)
        assert max(polled) < OUTAGE_POLL_SECONDS + 2.0, (subscriber.label, polled)
        # Phase 3: back at layer speed once the hub has reconnected: against a 2 s poll,
        # whose latencies spread over 0..2 s, nearly all under 0.5 s and none over 1 s.
        by_seq, settled = recovery[subscriber.label]
        assert len(settled) >= 15, settled
        late = {s: round(by_seq[s], 3) for s in settled if by_seq[s] >= FAST}
        assert len(late) <= len(settled) // 10, (
            f"{subscriber.label}: still slow {RECOVERY_ALLOWANCE} s after Redis came back: {late}"
        )
        assert max(by_seq[s] for s in settled) < LAYER_LATENCY, late
    # The contrast that makes phase 3 meaningful: through the poll alone the median is ~1 s.
    polled_all = [lag for sub in subscribers for lag in latencies(sub, published.times, down)]
    assert statistics.median(polled_all) > 0.4, summary(polled_all)
    for server in servers:
        log = server.log()
        assert server.alive(), log
        if LAYER == "core":
            # The hub saw the layer fail, and said when it worked again.
            assert "Receiving from the channel layer failed" in log, log
            assert "Receiving from the channel layer works again." in log, log


def test_server_killed_mid_stream(site: Site, pair: list[Daphne], processes: Processes) -> None:
    """A server is killed with SIGKILL mid-stream; its clients resume with Last-Event-ID on the
    other server or on the same one restarted, and miss nothing, twice nothing."""
    a, b = pair
    offset_b = b.log_offset()
    job = site.take_job()
    steps = 40
    total = steps + 2
    to_b = [Subscriber(f"a{i}->b", [a.url(job), b.url(job)], site.owner_session) for i in range(2)]
    to_a = [Subscriber(f"a{i}->a'", [a.url(job)], site.owner_session) for i in range(2)]
    on_b = [Subscriber(f"b{i}", [b.url(job)], site.owner_session) for i in range(2)]
    everyone = to_b + to_a + on_b
    try:
        start_subscribers(everyone)
        time.sleep(0.3)
        publisher = Publisher(processes, a.env, job, steps, interval=0.1)
        victims = to_b + to_a
        wait_until(lambda: all(len(s.events) >= 8 for s in victims), timeout=15)
        assert all(len(s.events) >= 8 for s in victims), [s.describe() for s in victims]
        killed_at = time.time()
        a.kill()
        offset_a = a.log_offset()
        time.sleep(0.5)  # events published while the server is down
        # Held while the server restarts, however long that takes on a busy machine: the
        # clients that come back to it must find events still to be published live.
        publisher.pause()
        try:
            a.restart()
            restarted_at = time.time()
            wait_until(lambda: all(s.established() >= 2 for s in to_a), timeout=15)
        finally:
            publisher.resume()
        published = publisher.finish(timeout=30)
        join_subscribers(everyone, timeout=15)
    finally:
        for subscriber in everyone:
            subscriber.stop()

    assert published.returncode == 0, published.stderr
    assert sorted(published.times) == list(range(1, total + 1))
    after_kill = [seq for seq, t in published.times.items() if t > killed_at]
    assert len(after_kill) >= 10, "the job was over before the kill"
    print(
        f"[{LAYER}] SIGKILL: {total} events, {len(after_kill)} published after the kill, "
        f"server restarted {restarted_at - killed_at:.1f} s after it"
    )
    for subscriber in to_b + to_a:
        assert_exactly_once(subscriber, total)
        assert_resumed_exactly(subscriber)
        established = [c for c in subscriber.connections if c.status == 200]
        assert len(established) == 2, subscriber.describe()
        killed, resumed = established
        assert killed.end.startswith("error") or killed.end == "ended by the server", (
            subscriber.describe()
        )
        expected_url = b.url(job) if subscriber in to_b else a.url(job)
        assert resumed.url == expected_url, subscriber.describe()
        live = [seq for seq, t in published.times.items() if t > resumed.opened_at + 0.3]
        lags = latencies(subscriber, published.times, live)
        assert live and max(lags) < LAYER_LATENCY, (subscriber.label, live, lags)
        refused = len(subscriber.connections) - 2
        print(
            f"  {subscriber.label}: {killed.seqs[0]}..{killed.seqs[-1]} ({killed.end}), "
            f"{refused} refused attempts, resumed with Last-Event-ID {resumed.last_event_id}: "
            f"{resumed.seqs[0]}..{resumed.seqs[-1]}; "
            f"lost {len(subscriber.missing(range(1, total + 1)))}, "
            f"duplicated {len(subscriber.duplicates)}; live latency {summary(lags)}"
        )
    for subscriber in on_b:
        assert len(subscriber.connections) == 1, subscriber.describe()
        assert subscriber.seqs == list(range(1, total + 1)), subscriber.describe()
        lags = latencies(subscriber, published.times, range(1, total + 1))
        assert max(lags) < LAYER_LATENCY, (subscriber.label, lags)
        print(f"  {subscriber.label} (on the surviving server): {total} events, {summary(lags)}")
    assert_clean(b, offset_b)
    assert_clean(a, offset_a)


def test_core_layer_idle_receive_survives_redis_socket_timeout(
    site: Site, processes: Processes
) -> None:
    """The core layer with ``socket_timeout: None`` (as tests/settings.py and the README
    configure it): a stream idle for 7 s, longer than redis-py 8's default 5 s socket timeout,
    still gets events at layer speed, and the hub's receive never failed."""
    env = site.env(
        poll_seconds=SLOW_POLL_SECONDS,
        heartbeat_seconds=HEARTBEAT_SECONDS,
        layer="core",
        prefix="_idle",
    )
    [server] = start_servers(processes, env, site.log_dir, ["idle-core"])
    job = site.take_job()
    subscriber = Subscriber("idle", [server.url(job)], site.owner_session)
    try:
        start_subscribers([subscriber])
        idle_until = time.monotonic() + IDLE_SECONDS
        wait_until(lambda: time.monotonic() >= idle_until or not subscriber.is_alive(), 15)
        assert subscriber.events == [] and subscriber.is_alive(), subscriber.describe()
        assert len(subscriber.pings) >= int(IDLE_SECONDS / HEARTBEAT_SECONDS) - 1
        published = Publisher(processes, env, job, steps=3, interval=0.05).finish(timeout=20)
        join_subscribers([subscriber], timeout=10)
    finally:
        subscriber.stop()

    assert published.returncode == 0, published.stderr
    assert subscriber.seqs == [1, 2, 3, 4, 5], subscriber.describe()
    lags = latencies(subscriber, published.times, range(1, 6))
    assert max(lags) < LAYER_LATENCY, lags
    log = server.log()
    assert "Receiving from the channel layer failed" not in log, log
    assert_clean(server, 0)
    print(f"[core] after {IDLE_SECONDS:.0f} s idle: 5 events, latency {summary(lags)}")


def test_streams_opened_during_a_redis_outage_return_to_layer_speed(
    site: Site, processes: Processes
) -> None:
    """Streams opened while Redis is down (their group join fails) are served by the database
    poll; once Redis is back they must get events at layer speed again, like the streams that
    were open before the outage: on a server whose hub was already receiving (C) and on a server
    whose first stream opened during the outage (D)."""
    redis = RedisServer(processes, site.log_dir)
    redis.start()
    env = site.env(
        poll_seconds=OUTAGE_POLL_SECONDS,
        heartbeat_seconds=OUTAGE_HEARTBEAT_SECONDS,
        redis_url=redis.url,
        prefix="_late",
    )
    c, d = start_servers(processes, env, site.log_dir, ["late-c", "late-d"])
    quiet_job, job = site.take_job(), site.take_job()
    # C's hub is receiving before the outage (a stream of a job that publishes nothing).
    quiet = Subscriber("c-quiet", [c.url(quiet_job)], site.owner_session)
    late = [
        Subscriber(name, [server.url(job)], site.owner_session)
        for name, server in (("c-late", c), ("d-late", d))
    ]
    try:
        start_subscribers([quiet])
        time.sleep(0.3)
        stopped_at = time.time()
        redis.stop()
        start_subscribers(late)
        time.sleep(1.0)  # the hubs try (and fail) to join the job's group
        redis.start()
        restarted_at = time.time()
        # A hub retries a failing layer 0.2, 0.7, 1.7, 3.7, 8.7 s after the first failure: after
        # an outage shorter than 1.5 s it is back within a second of the restart. The publisher
        # needs another second or more to start.
        short = restarted_at - stopped_at < 1.5
        time.sleep(2.5 if short else RECOVERY_ALLOWANCE)
        published = Publisher(processes, env, job, steps=10, interval=0.1).finish(timeout=20)
        join_subscribers(late, timeout=10)
    finally:
        for subscriber in [quiet, *late]:
            subscriber.stop()
        join_subscribers([quiet], timeout=5)

    assert published.returncode == 0, published.stderr
    total = 12
    figures = [
        f"[{LAYER}] streams opened during a Redis outage, {total} events published "
        f"{min(published.times.values()) - restarted_at:.1f} s after Redis came back"
    ]
    slow: dict[str, list[float]] = {}
    for subscriber in late:
        assert len(subscriber.connections) == 1, subscriber.describe()
        assert subscriber.seqs == list(range(1, total + 1)), subscriber.describe()
        lags = latencies(subscriber, published.times, range(1, total + 1))
        figures.append(f"  {subscriber.label}: received {len(lags)}, latency {summary(lags)}")
        if max(lags) >= FAST:
            slow[subscriber.label] = [round(lag, 3) for lag in lags]
    for server in (c, d):
        log = server.log()
        figures.append(
            f"  {server.log_path.stem}: {log.count('Could not join the group')} 'Could not join "
            f"the group', {log.count('Receiving from the channel layer failed')} 'Receiving "
            f"... failed', {log.count('works again')} 'works again'"
        )
    print("\n".join(figures))
    assert not slow, (
        f"still at database-poll speed ({OUTAGE_POLL_SECONDS} s poll) "
        f"{min(published.times.values()) - restarted_at:.1f} s and more after Redis came back: "
        f"{slow}"
    )

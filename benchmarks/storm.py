"""S10, the reconnect storm: what browsers see when the server they stream from dies.

After a crash or a deploy every EventSource reconnects within the same ``retry:`` window, each
with its ``Last-Event-ID``: the server must resume every stream from the database (nothing
lost, nothing twice) while its jobs keep publishing. Two shapes:

- ``restart``: one server process, SIGKILLed and started again on the same port;
- ``failover``: two server processes, one SIGKILLed; its clients move to the other (the load
  client tries the next port when one refuses, as a load balancer's health check would).

Measured: the time from the server being back (``t_back``: the restarted server listening; on
failover, the kill itself) until every connection was caught up, i.e. had every event published
before it was served again (``t_resumed``: the first byte of its new response; ``t_back`` for a
connection that was never cut); the part of it beyond the ``retry:`` delay, which the server
cannot shorten (from the later of ``t_back`` and the connection's end plus the delay, when a
browser would be back at the earliest); events lost and duplicated, counted per connection
over all of its connections with the client's bitmap (``client.py``). Of the peers,
django-eventstream (database storage, Redis, ``Last-Event-ID``) is the one that stores events
and publishes from another process, so it runs too: the in-loop peers lose their publisher
with the server, and the naive view keeps no history.

    python -m benchmarks.storm publish [--kind ours|eventstream] --jobs ID,ID,... --n N --rate R
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.client import Conn
    from benchmarks.harness import Env, Runner, Server

FULL = {"streams": 2000, "jobs": 20, "rate": 10.0, "n": 200, "kill_after": 8.0}
QUICK = {"streams": 200, "jobs": 10, "rate": 10.0, "n": 90, "kill_after": 3.0}
SHAPES = ("restart", "failover")
# Granian serves from a child process that outlives a SIGKILL of its parent (holding the port).
SERVERS = ("daphne", "uvicorn")


def applies(c: dict[str, Any]) -> bool:
    if c["app"] == "eventstream":
        return True  # stores its events and resumes from Last-Event-ID: the one peer that can
    return bool(
        c["app"] == "ours"
        and c.get("direct", True)
        and c["layer"] in ("pubsub", "core")
        and c["server"] in SERVERS
    )


# -- the client side: per-connection accounting (runs in a client worker) ------------------------


def catch_up(conns: Sequence[Conn], t_back: float) -> dict[str, Any]:
    """For each connection: the events published before its cutoff (``t_resumed``, or
    ``t_back`` if it was never cut) form a prefix of its job's events (a job publishes in
    order); it was caught up at the latest receipt among them. A connection with a hole below
    its newest event is not caught up (the hole is a loss); nor is one that was cut and never
    served again."""
    delays: list[float] = []
    beyond: list[float] = []
    replays: list[float] = []
    retries: list[float] = []
    holes = 0
    never = 0
    not_resumed = 0
    for c in conns:
        seen, recv_at, pub_t = c.seen, c.recv_at, c.pub_t
        if recv_at is None or pub_t is None:
            continue
        if c.reconnects and c.t_resumed <= 0:
            not_resumed += 1
            continue
        cutoff = c.t_resumed if c.reconnects else t_back
        last = -1
        for i in range(len(seen) - 1, -1, -1):
            if seen[i] and pub_t[i] < cutoff:
                last = i
                break
        if last < 0:
            never += 1
            continue
        # Any event missing below the newest one received is a hole: one published while the
        # connection was down and never replayed sits below the live events that followed.
        top = len(seen) - 1 - seen[::-1].index(1)
        missing = top + 1 - sum(seen[: top + 1])
        if missing:
            holes += missing
            continue
        caught_at = max(recv_at[: last + 1])
        delays.append(max(0.0, caught_at - t_back))
        retry = c.retry_seconds()
        earliest = max(t_back, c.t_lost + retry) if c.reconnects else t_back
        beyond.append(max(0.0, caught_at - earliest))
        if c.reconnects:
            replays.append(max(0.0, caught_at - c.t_resumed))
            retries.append(retry)
    return {
        "catch_up_s": delays,
        "beyond_retry_s": beyond,
        "replay_s": replays,
        "retry_s": sorted(set(retries)),
        "prefix_holes": holes,
        "no_event_before": never,
        "not_resumed": not_resumed,
        "moved": sum(1 for c in conns if c.reconnects),
    }


def _pct(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))] if values else None


def merge_catch_up(replies: list[dict[str, Any]]) -> dict[str, Any]:
    delays = sorted(d for r in replies for d in r["catch_up_s"])
    replays = sorted(d for r in replies for d in r["replay_s"])
    beyond = sorted(d for r in replies for d in r["beyond_retry_s"])
    retry = max((s for r in replies for s in r["retry_s"]), default=0.0)
    out: dict[str, Any] = {
        "caught_up_conns": len(delays),
        "prefix_holes": sum(r["prefix_holes"] for r in replies),
        "no_event_before": sum(r["no_event_before"] for r in replies),
        "not_resumed": sum(r["not_resumed"] for r in replies),
        "reconnected_conns": sum(r["moved"] for r in replies),
        "retry_s": retry,
    }
    for q, name in ((0.5, "p50"), (0.99, "p99"), (1.0, "max")):
        out[f"catch_up_{name}_s"] = _pct(delays, q)
        out[f"replay_{name}_s"] = _pct(replays, q)
        out[f"beyond_retry_{name}_s"] = _pct(beyond, q)
    # The catch-up curve for the plot: connections caught up by each tenth of a second.
    if delays:
        steps = int(delays[-1] * 10) + 2
        out["curve"] = [
            (k / 10, sum(1 for d in delays if d <= k / 10)) for k in range(min(steps, 600))
        ]
    return out


# -- the harness side ----------------------------------------------------------------------------


def run(runner: Runner, config: str, env: Env, shape: str) -> dict[str, Any]:
    from benchmarks import harness

    q = harness_params(runner)
    servers = [harness.Server(env, runner.tmp)]
    if shape == "failover":
        servers.append(harness.Server(env, runner.tmp))
    clients = harness.Clients(max(1, runner.args.clients))
    res = runner.base(f"S10-{shape}", config, env, servers[0])
    jobs = [env.new_job() for _ in range(q["jobs"])]
    streams, n, rate = q["streams"], q["n"], q["rate"]
    res.update(shape=shape, streams=streams, jobs=len(jobs), n=n, rate_per_job=rate)
    publisher = None
    try:
        publisher = start_publisher(env, jobs, n, rate)
        opened = open_streams(clients, env, servers, streams, n, [env.path(j) for j in jobs])
        res.update(open=opened)
        time.sleep(1.0)
        assert publisher.stdin is not None
        publisher.stdin.write("GO\n")
        publisher.stdin.flush()
        t_go = time.time()
        time.sleep(q["kill_after"])
        victim = servers[0]
        killed_pid = victim.pid
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        t_kill = time.time()
        if shape == "restart":
            servers[0] = harness.Server(env, runner.tmp, port=victim.port)
            t_back = servers[0].listening_at
        else:
            servers.pop(0)
            t_back = t_kill
        res.update(
            killed_pid=killed_pid,
            restarted_pid=servers[0].pid if shape == "restart" else None,
            restarted=shape == "restart" and servers[0].pid != killed_pid,
            kill_after_s=t_kill - t_go,
            down_s=t_back - t_kill,
        )
        # The publisher ends on its schedule; then every connection must catch up.
        out, err = publisher.communicate(timeout=n / rate + 120)
        lines = [x for x in out.strip().splitlines() if x.startswith("{")]
        pstats: dict[str, Any] = (
            json.loads(lines[-1]) if lines else {"errors": 1, "error_sample": [err[-800:]]}
        )
        got = harness.merge_collect(
            clients.call("collect", [{"timeout": 90}] * len(clients.pipes), timeout=150)
        )
        storm = merge_catch_up(
            clients.call("storm", [{"t_back": t_back}] * len(clients.pipes), timeout=60)
        )
        per_job = pstats.get("published_per_job") or [0]
        expected = streams * min(per_job) if len(set(per_job)) == 1 else None
        res.update(
            publisher=pstats,
            expected=expected,
            received=got["received"],
            lost=(expected - got["received"]) if expected is not None else None,
            duplicated=got["dups"],
            unexpected=got["unexpected"],
            http_errors=got["http_errors"],
            disconnects=got["disconnects"],
            reconnects=got.get("reconnects", 0),
            reconnect_attempts=got.get("reconnect_attempts", 0),
            refused=got.get("refused", 0),
            gave_up=got.get("gave_up", 0),
            complete_conns=got["complete_conns"],
            still_open=got["open"],
            storm=storm,
            catch_up_max_s=storm["catch_up_max_s"],
            catch_up_p99_s=storm["catch_up_p99_s"],
            beyond_retry_max_s=storm.get("beyond_retry_max_s"),
            server_cpu_s_after=sum(harness.cpu_s(s.pid) for s in servers),
            rss_end_kb=sum(harness.rss_kb(s.pid) for s in servers),
            db_conns_end=env.db_conns(servers[0].pid),
        )
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait(5)
        clients.close()
        res["server_log_tail"] = servers[0].log_tail()[-600:]
        for s in servers:
            s.stop()
    return res


def harness_params(runner: Runner) -> dict[str, Any]:
    return QUICK if runner.args.quick else FULL


def open_streams(
    clients: Any, env: Env, servers: list[Server], total: int, n: int, paths: list[str]
) -> dict[str, Any]:
    from benchmarks import harness

    k = len(clients.pipes)
    shares = [total // k + (1 if i < total % k else 0) for i in range(k)]
    specs = [
        {
            "host": harness.HOST,
            "port": servers[0].port,
            "ports": [s.port for s in servers],
            "path": paths[0],
            # Each worker starts at a different job so that every job gets its share.
            "paths": paths[i % len(paths) :] + paths[: i % len(paths)],
            "cookie": env.cookie(),
            "count": share,
            "n_expected": n,
            "reconnect": True,
            "concurrency": 50,
            "sub_timeout": 90,
        }
        for i, share in enumerate(shares)
    ]
    replies = clients.call("open", specs, timeout=240)
    return {
        "connected": sum(r["connected"] for r in replies),
        "subscribed": sum(r["subscribed"] for r in replies),
        "connect_errors": sum(r["connect_errors"] for r in replies),
        "http_errors": sum(r["http_errors"] for r in replies),
        "open_seconds": max(r["open_seconds"] for r in replies),
    }


def start_publisher(env: Env, jobs: list[str], n: int, rate: float) -> subprocess.Popen[str]:
    from benchmarks import harness

    proc = subprocess.Popen(
        [
            harness.PY,
            "-m",
            "benchmarks.storm",
            "publish",
            "--kind",
            "eventstream" if env.c["app"] == "eventstream" else "ours",
            "--jobs",
            ",".join(jobs),
            "--n",
            str(n),
            "--rate",
            str(rate),
        ],
        cwd=harness.ROOT,
        env=env.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"storm publisher failed to start: {line} {err[-2000:]}")
    return proc


# -- the publisher process ---------------------------------------------------------------------


def publish_main(kind: str, jobs: list[str], n: int, rate: float) -> dict[str, Any]:
    """Every job publishes ``n`` events at ``rate`` a second, all jobs in one schedule (event
    ``i`` of every job is due at ``t0 + i / rate``), as a pool of task workers would: with
    ``django_sse.publish`` (``kind`` "ours") or django-eventstream's ``send_event`` (its
    database storage and Redis, on a channel named after the job)."""
    from benchmarks.schedule import run_sync

    send: Callable[[str, dict[str, Any]], Any]
    targets: list[Any]
    if kind == "eventstream":
        from django_eventstream import send_event

        targets = list(jobs)
        send = lambda channel, data: send_event(channel, "bench", data)  # noqa: E731
    else:
        from django_sse import publish
        from django_sse.models import Job

        targets = [Job.objects.get(pk=j) for j in jobs]
        send = lambda job, data: publish(job, "bench", data)  # noqa: E731
    per_job = [0] * len(targets)

    def one(k: int, t: float) -> None:
        j, i = k % len(targets), k // len(targets)
        send(targets[j], {"t": t, "i": i})
        per_job[j] += 1

    sys.stdout.write("READY\n")
    sys.stdout.flush()
    ready, _, _ = select.select([sys.stdin], [], [], 120)
    if not ready:
        return {"done": False, "errors": 1, "error_sample": ["no GO within 120 s"]}
    sys.stdin.readline()
    cpu0 = time.process_time()
    stats = run_sync(n * len(targets), rate * len(targets), one, n / rate + 60)
    stats["publisher_cpu_s"] = time.process_time() - cpu0
    stats["published_per_job"] = per_job
    if kind == "ours":
        from django_sse.pushing import layer_sender

        stats["layer_flushed"] = layer_sender.flush(10.0)
    return stats


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("publish")
    p.add_argument("--jobs", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--kind", default="ours", choices=["ours", "eventstream"])
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    stats = publish_main(args.kind, args.jobs.split(","), args.n, args.rate)
    sys.stdout.write(json.dumps(stats) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""S9, admission over HTTP: N authorized streams opened as fast as the load client can, each
on a job of its own with a short stored history; how long until every one has its replay.

For ours, N jobs owned by the benchmark's user, each with ``events`` stored events, written in
bulk before the clock starts (``prepare``, below); each stream replays its job from the start.
The peers keep no history, except django-eventstream: its database storage gets ``events + 1``
events per channel and each stream asks for everything after the first one (``lastEventId``),
so it replays ``events`` events from its storage as ours does. For the naive Django view,
sse-starlette and the raw ceiling, a stream's "replay" is its first body chunk (the naive view
writes it after ``group_add``: its subscription).

Measured per size, on a fresh server process (the connections closed and the server stopped
between sizes): from the first connect attempt to the moment every connection had its whole
replay (``admitted_s``), streams admitted per second, and per connection the time from its own
connect attempt to its first event (the first chunk for the peers without history) and to its
whole replay; connect errors, HTTP errors, connections that closed or never completed; server
CPU seconds over the admission; server threads and database connections with every stream
still open. The load client opens at most 50 connections at a time (as in every scenario);
every server listens with a backlog of 4,096 (``harness.Server``; Daphne's own default, 50,
overflowed in a 2,000-stream admission here).

``benchmarks/admission.py`` asks the same question in process (no server, no network): the
place to profile the stream's own admission path.

    python -m benchmarks.admission_http prepare --kind ours|eventstream --n N --events E
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.client import Conn
    from benchmarks.harness import Env, Runner

# Ours (the S8 configurations and the in-memory layer on SQLite) and every peer but ref-plain.
CONFIGS = (
    "daphne-pg-pubsub",
    "uvicorn-pg-pubsub",
    "granian-pg-pubsub",
    "daphne-sqlite-mem",
    "peer-naive-pubsub",
    "peer-starlette",
    "peer-raw",
    "peer-eventstream",
)
# The naive view and django-eventstream hold a thread and a SQLite connection per open stream
# (S3): past this many streams they measure the thread, not the stream, so they stop here.
THREAD_PER_STREAM_APPS = ("naive", "eventstream")
THREAD_PER_STREAM_MAX = 2000
CONCURRENCY = 50
OPEN_TIMEOUT_S = 120.0
COLLECT_TIMEOUT_S = 120.0


def applies(config: str) -> bool:
    return config in CONFIGS


def sizes_for(c: dict[str, Any], sizes: Sequence[int]) -> list[int]:
    if c["app"] in THREAD_PER_STREAM_APPS:
        return [n for n in sizes if n <= THREAD_PER_STREAM_MAX]
    return list(sizes)


def has_history(c: dict[str, Any]) -> bool:
    return c["app"] in ("ours", "eventstream")


# -- the harness side ----------------------------------------------------------------------------


def run(runner: Runner, config: str, env: Env) -> list[dict[str, Any]]:
    from benchmarks import harness

    q = harness.QUICK["S9"] if runner.args.quick else harness.FULL["S9"]
    events = int(q["events"])
    sizes = sizes_for(env.c, q["streams"])
    skipped = [n for n in q["streams"] if n not in sizes]
    rows: list[dict[str, Any]] = []
    if sizes:
        # One more stream than the largest size: the warm-up's, on a job of its own.
        paths, prepared = prepare(env, max(sizes) + 1, events)
        warm = paths.pop()
        for k, n in enumerate(sizes):
            row = run_size(runner, config, env, paths[:n], warm, events, profile=k == 0)
            row["prepare"] = prepared
            rows.append(row)
    for n in skipped:
        rows.append(
            {
                "scenario": "S9",
                "config": config,
                "streams": n,
                "skipped": (
                    "a thread and a database connection per open stream: "
                    f"not run above {THREAD_PER_STREAM_MAX:,} streams"
                ),
                "quick": bool(runner.args.quick),
            }
        )
    return rows


def prepare(env: Env, n: int, events: int) -> tuple[list[str], dict[str, Any]]:
    """The path of each of ``n`` streams, each on a job (channel, topic) of its own, with the
    histories stored first where the app keeps one."""
    app = env.c["app"]
    if app == "ours" or app == "eventstream":
        from benchmarks import harness

        done = subprocess.run(
            [
                harness.PY,
                "-m",
                "benchmarks.admission_http",
                "prepare",
                "--kind",
                app,
                "--n",
                str(n),
                "--events",
                str(events),
            ],
            cwd=harness.ROOT,
            env=env.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"S9 prepare failed: {done.stderr[-2000:]}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        targets: list[str] = out.pop("targets")
        if app == "ours":
            return [env.path(job) for job in targets], out
        # Everything after each channel's first stored event.
        return [f"/es/events/?channel={ch}&lastEventId={ch}:1" for ch in targets], out
    if app == "naive":
        return [f"/naive/events/?topic=s9_{i}" for i in range(n)], {}
    return [env.path("") for _ in range(n)], {}


def run_size(
    runner: Runner,
    config: str,
    env: Env,
    paths: list[str],
    warm: str,
    events: int,
    profile: bool,
) -> dict[str, Any]:
    from benchmarks import harness

    n = len(paths)
    n_expected = events if has_history(env.c) else 0
    server = harness.Server(env, runner.tmp)
    clients = harness.Clients(max(1, runner.args.clients))
    res = runner.base("S9", config, env, server)
    res.update(
        streams=n,
        events=events,
        replay="stored events" if n_expected else "first chunk",
        nofile_limit=harness.nofile_of(server.pid),
    )
    profiler = None
    try:
        needle = b"event: bench" if n_expected else b"retry"
        res["warm_up_s"] = warm_up(server.port, warm, env.cookie(), needle)
        if profile and runner.args.profile:
            profiler = harness.Profiler(server.pid, runner.profile_dir / f"S9-{config}.txt", 10.0)
        k = len(clients.pipes)
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        starts = [sum(shares[:i]) for i in range(k)]
        specs = [
            {
                "host": harness.HOST,
                "port": server.port,
                "path": paths[start],
                "paths": paths[start : start + share],
                "cookie": env.cookie(),
                "count": share,
                "n_expected": n_expected,
                "concurrency": CONCURRENCY,
                "sub_timeout": OPEN_TIMEOUT_S,
            }
            for start, share in zip(starts, shares, strict=True)
        ]
        cpu0 = harness.cpu_s(server.pid)
        opened = clients.call("open", specs, timeout=OPEN_TIMEOUT_S + 120)
        got = harness.merge_collect(
            clients.call("collect", [{"timeout": COLLECT_TIMEOUT_S}] * k, timeout=180)
        )
        server_cpu = harness.cpu_s(server.pid) - cpu0
        timing = merge_timings(clients.call("admission", [{}] * k, timeout=60), n)
        res.update(timing)
        res.update(
            connect_errors=sum(r["connect_errors"] for r in opened),
            connect_error_sample=[e for r in opened for e in r["connect_error_sample"]][:3],
            error_sample=[e for r in opened for e in r["error_sample"]][:3],
            http_errors=got["http_errors"],
            disconnects=got["disconnects"],
            still_open=got["open"],
            received=got["received"],
            duplicated=got["dups"],
            unexpected=got["unexpected"],
            server_cpu_s=server_cpu,
            client_cpu_s=clients.cpu(),
            threads_end=harness.threads(server.pid),
            db_conns_end=env.db_conns(server.pid),
            rss_end_kb=harness.rss_kb(server.pid),
            client_nofile_limit=min(harness.nofile_of(p.pid or 0) or 0 for p in clients.procs),
        )
        if profiler is not None:
            res["profile"] = profiler.finish()
    finally:
        clients.close()
        res["server_log_tail"] = server.log_tail()[-600:]
        server.stop()
    return res


def warm_up(
    port: int, path: str, cookie: str, needle: bytes, timeout: float = 15.0
) -> float | None:
    """One stream opened and closed before the clock starts, so that the first request's
    one-time costs (URLconf, imports, the first database connection) are not counted as
    admission: a deployed server is warm. Returns its time, None if ``needle`` never came."""
    from benchmarks import harness

    started = time.monotonic()
    lines = [f"GET {path} HTTP/1.1", f"Host: {harness.HOST}:{port}", "Accept: text/event-stream"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    got = b""
    try:
        with socket.create_connection((harness.HOST, port), timeout=timeout) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            while needle not in got and time.monotonic() - started < timeout:
                data = sock.recv(65536)
                if not data:
                    break
                got += data
    except OSError:
        return None
    return time.monotonic() - started if needle in got else None


# -- the client side (runs in a client worker) ---------------------------------------------------


def timings(conns: Sequence[Conn]) -> dict[str, Any]:
    """Per connection: its connect attempt, its first event and its whole replay (wall clock).
    Without expected events (a peer with no history) the first body chunk is both."""
    starts: list[float] = []
    chunks: list[float] = []
    firsts: list[float] = []
    completes: list[float] = []
    for c in conns:
        if c.w.n_expected:
            first, complete = c.t_first_event, c.t_complete
        else:
            first = complete = c.t_first_chunk
        starts.append(c.t_start)
        chunks.append(c.t_first_chunk)
        firsts.append(first)
        completes.append(complete)
    return {"t_start": starts, "t_chunk": chunks, "t_first": firsts, "t_complete": completes}


def _pct(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))] if values else None


def merge_timings(replies: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Admission figures from every worker's ``timings`` (``n``: the streams asked for)."""
    starts = [t for r in replies for t in r["t_start"] if t]
    rows = [
        (s, h, f, c)
        for r in replies
        for s, h, f, c in zip(
            r["t_start"], r["t_chunk"], r["t_first"], r["t_complete"], strict=True
        )
    ]
    chunk_ms = sorted(1000 * (h - s) for s, h, _f, _c in rows if h)
    first_ms = sorted(1000 * (f - s) for s, _h, f, _c in rows if f)
    replay_ms = sorted(1000 * (c - s) for s, _h, _f, c in rows if c)
    admitted = len(replay_ms)
    t0 = min(starts, default=0.0)
    last = max((c for _s, _h, _f, c in rows if c), default=0.0)
    span = (last - t0) if admitted and t0 else None
    out: dict[str, Any] = {
        "connected": len(rows),
        "admitted": admitted,
        "failed": n - admitted,
        # The whole admission: defined only when every stream got its replay.
        "admitted_s": span if admitted == n else None,
        "admitted_any_s": span,
        "opens_per_s": (n / span) if span and admitted == n else None,
    }
    for q, name in ((0.5, "p50"), (0.99, "p99"), (1.0, "max")):
        out[f"first_chunk_{name}_ms"] = _pct(chunk_ms, q)
        out[f"first_event_{name}_ms"] = _pct(first_ms, q)
        out[f"replay_{name}_ms"] = _pct(replay_ms, q)
    return out


# -- prepare: the histories, written in bulk before the clock starts -----------------------------


def prepare_ours(n: int, events: int) -> list[str]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from django_sse.models import Job, JobEvent

    user = get_user_model().objects.get(username="bench")
    t = time.time()
    with transaction.atomic():
        jobs = Job.objects.bulk_create(
            [Job(owner=user, name=f"s9 {i}", last_seq=events) for i in range(n)],
            batch_size=1000,
        )
        JobEvent.objects.bulk_create(
            [
                JobEvent(job=job, seq=i + 1, type="bench", data={"t": t, "i": i})
                for job in jobs
                for i in range(events)
            ],
            batch_size=5000,
        )
    return [str(job.pk) for job in jobs]


def prepare_eventstream(n: int, events: int) -> list[str]:
    """Channel ``s9_i`` gets an anchor event (eid 1) and then ``events`` "bench" events, stored
    as ``send_event`` stores them: its JSON text, JSON-encoded again by ``DjangoModelStorage``."""
    from django.db import transaction
    from django_eventstream.models import Event, EventCounter

    t = time.time()
    channels = [f"s9_{i}" for i in range(n)]
    with transaction.atomic():
        Event.objects.bulk_create(
            [Event(channel=ch, type="anchor", data='"{}"', eid=1) for ch in channels]
            + [
                Event(
                    channel=ch,
                    type="bench",
                    data=json.dumps(json.dumps({"t": t, "i": i})),
                    eid=i + 2,
                )
                for ch in channels
                for i in range(events)
            ],
            batch_size=5000,
        )
        EventCounter.objects.bulk_create(
            [EventCounter(name=ch, value=events + 1) for ch in channels], batch_size=5000
        )
    return channels


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--kind", required=True, choices=["ours", "eventstream"])
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--events", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    started = time.perf_counter()
    make = prepare_ours if args.kind == "ours" else prepare_eventstream
    targets = make(args.n, args.events)
    out = {"targets": targets, "stored_events": args.n * args.events}
    out["prepare_s"] = time.perf_counter() - started
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

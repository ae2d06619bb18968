"""The capacity check (issue 14): several server processes, Redis and PostgreSQL, counted against
the model in ``docs/deployment.rst`` ("Sizing a site"). Correctness and message counts, not
throughput: the figures per process come from the benchmark scenarios (``RESULTS.md``).

    python -m benchmarks.capacity [--quick] [--config daphne-pg-pubsub|uvicorn-pg-pubsub|
                                  daphne-pg-core] [--out benchmarks/results/capacity.json]

What runs: ``PROCESSES`` server processes behind ``DirectWriteMiddleware`` (the harness's
``*-pg-*`` configurations), a redis-server of its own on a spare port (so that its counters hold
nothing but this run; stopped by its pid at the end), a PostgreSQL database of its own (the
harness's ``Env``). ``WATCHERS`` streams over ``JOBS`` jobs: job ``j`` is streamed by
``1 + j % PROCESSES`` of the processes (so the (process, job) pairs are not simply processes ×
jobs), and ``UNWATCHED`` more jobs publish with nobody watching. Two publisher processes (task
workers) publish ``EVENTS`` events per job at ``RATE`` events/s in all: the even jobs one event per
``publish()`` call, the odd ones in ``publish_many()`` batches of ``BATCH``.

Checked (exact):

- every watcher got every event of its job exactly once, in ``seq`` order (the SSE ``id``), and
  each event's payload is the one published with that ``seq``;
- pub/sub layer: Redis ``PUBLISH`` calls = layer messages the model predicts (one per
  ``publish()`` call, one per batch); ``SUBSCRIBE`` calls = server processes + distinct
  (process, job) pairs; each server process's subscriptions (``CLIENT LIST``'s ``sub``) = 1 +
  the jobs it streams; ``PUBSUB NUMSUB`` of each job's group channel = the processes streaming
  it. Core layer: ``ZRANGE`` calls (the group lookup of each ``group_send``) = layer messages,
  and each group's members (``ZCARD``) = the processes streaming it;
- PostgreSQL: rows inserted into the event table = events; rows updated in the job table =
  publish calls (one ``UPDATE`` of ``last_seq`` per call, whatever its size).

Reported next to the model's figure, not checked: reads by table over the run (admissions,
session checks every ``HEARTBEAT_SECONDS``, the hub's poll every ``POLL_SECONDS``), database
connections per server process, and every Redis command's count.

    python -m benchmarks.capacity publish --spec JSON    (a publisher process, started here)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.sse import ChunkedDecoder, SSEParser

FULL = {"processes": 4, "jobs": 20, "unwatched": 2, "watchers": 2000, "events": 30, "rate": 100.0}
QUICK = {"processes": 4, "jobs": 20, "unwatched": 2, "watchers": 400, "events": 20, "rate": 50.0}
BATCH = 5  # events per publish_many() call, odd jobs
PUBLISHERS = 2
# The app's defaults, which the benchmark settings keep.
HEARTBEAT_SECONDS = 15.0
POLL_SECONDS = 1.0
CONFIGS = ("daphne-pg-pubsub", "uvicorn-pg-pubsub", "daphne-pg-core")
GROUP_PREFIX = "django_sse"  # the app's default GROUP_PREFIX (the benchmark settings keep it)
OUT = Path(__file__).resolve().parent / "results" / "capacity.json"


# ruff: noqa: RUF002  (multiplication signs, as in report.py)

# -- the model ------------------------------------------------------------------------------------


def placement(jobs: int, processes: int) -> list[list[int]]:
    """The server processes streaming each watched job: job ``j`` on ``1 + j % processes`` of
    them, starting at process ``j % processes``."""
    return [[(j + r) % processes for r in range(1 + j % processes)] for j in range(jobs)]


def batch_of(job: int) -> int:
    """Events per publish call of job ``job``: 1 (``publish()``) for even jobs, ``BATCH``
    (``publish_many()``) for odd ones."""
    return 1 if job % 2 == 0 else BATCH


def predict(q: dict[str, Any]) -> dict[str, Any]:
    """What the model says this run costs (see docs/deployment.rst, "Sizing a site")."""
    procs, jobs, events = q["processes"], q["jobs"], q["events"]
    where = placement(jobs, procs)
    all_jobs = jobs + q["unwatched"]
    calls = sum(math.ceil(events / batch_of(j)) for j in range(all_jobs))
    streamed = [sum(1 for w in where if p in w) for p in range(procs)]
    pairs = sum(len(w) for w in where)
    return {
        "events": events * all_jobs,
        "publish_calls": calls,
        # One layer message per publish call: a batch's events (small here) fit in one.
        "layer_messages": calls,
        "pairs": pairs,
        "subscriptions_per_process": [1 + n for n in streamed],
        "subscribe_calls": procs + pairs,
        "numsub_per_job": [len(w) for w in where] + [0] * q["unwatched"],
        # Redis sends each message once to every process subscribed to its job.
        "redis_deliveries": sum(
            math.ceil(events / batch_of(j)) * len(w) for j, w in enumerate(where)
        ),
        "watched_messages": sum(math.ceil(events / batch_of(j)) for j in range(jobs)),
        "sse_deliveries": q["watchers"] * events,
        "pg_rows_inserted": events * all_jobs,
        "pg_job_updates": calls,
    }


def watchers(q: dict[str, Any]) -> list[tuple[int, int]]:
    """``(job, process)`` of each watcher: jobs round robin, each job's watchers round robin
    over its processes."""
    where = placement(q["jobs"], q["processes"])
    seen: Counter[int] = Counter()
    out: list[tuple[int, int]] = []
    for k in range(q["watchers"]):
        job = k % q["jobs"]
        out.append((job, where[job][seen[job] % len(where[job])]))
        seen[job] += 1
    return out


# -- Redis and PostgreSQL counters ----------------------------------------------------------------


class OwnRedis:
    """A redis-server of this run's own on a spare port, no persistence; ``stop`` by its pid."""

    def __init__(self, tmp: Path) -> None:
        from benchmarks import harness

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: the check needs a Redis of its own")
        self.port = harness.free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                harness.HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis(host=harness.HOST, port=self.port, socket_timeout=10)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not answer within 15 s") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def calls(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v != before.get(k, 0)}


def pg_tables(db_name: str) -> dict[str, dict[str, int]]:
    """Per-table counters of the run's database: rows inserted and updated, index and sequential
    scans (the statistics views show the database one is connected to)."""
    import psycopg

    from benchmarks import harness

    with psycopg.connect(
        host=harness.HOST, port=5432, user="postgres", dbname=db_name, autocommit=True
    ) as admin:
        rows = admin.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, coalesce(idx_scan, 0), seq_scan "
            "FROM pg_stat_all_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0]: {"ins": r[1], "upd": r[2], "idx_scan": r[3], "seq_scan": r[4]} for r in rows}


def pg_database(db_name: str) -> dict[str, int]:
    from benchmarks import harness

    with harness.pg_admin() as admin:
        row = admin.execute(
            "SELECT xact_commit, tup_fetched FROM pg_stat_database WHERE datname = %s", [db_name]
        ).fetchone()
    return {"xact_commit": int(row[0]), "tup_fetched": int(row[1])} if row else {}


def table_diff(
    after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    return {
        t: {k: v - before.get(t, {}).get(k, 0) for k, v in counts.items()}
        for t, counts in sorted(after.items())
        if any(v != before.get(t, {}).get(k, 0) for k, v in counts.items())
    }


def client_ports_of(pids: list[int]) -> dict[int, int]:
    """Local TCP port -> pid, for the sockets of ``pids`` (and their children): which server
    process holds which Redis or PostgreSQL connection."""
    from benchmarks import harness

    inode_pid: dict[str, int] = {}
    for pid in pids:
        for p in [pid, *harness._descendants(pid)]:
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{p}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"/proc/{p}/fd/{fd}")
                        if link.startswith("socket:["):
                            inode_pid[link[8:-1]] = pid
    ports: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[9] in inode_pid:
                    ports[int(cols[1].rsplit(":", 1)[1], 16)] = inode_pid[cols[9]]
    return ports


# -- the load client (a worker process) -----------------------------------------------------------


class Watch(asyncio.Protocol):
    """One stream of one job: counts its events by ``seq`` (the SSE id)."""

    def __init__(self, events: int, request: bytes, job: int) -> None:
        self.request = request
        self.job = job
        self.seen = bytearray(events + 1)
        self.unique = self.dups = self.disorder = self.mismatch = self.other = 0
        self.last = 0
        self.first_chunk = asyncio.get_running_loop().create_future()
        self.head = b""
        self.status = 0
        self.decoder: ChunkedDecoder | None = None
        self.parser = SSEParser()
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.first_chunk.done():
            self.first_chunk.set_result(False)

    def data_received(self, data: bytes) -> None:
        if self.decoder is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.status = int(head.split(b" ", 2)[1])
            self.decoder = ChunkedDecoder()
            if self.status != 200:
                self.first_chunk.set_result(False)
                assert self.transport is not None
                self.transport.close()
                return
        body = self.decoder.feed(data)
        if not body:
            return
        if not self.first_chunk.done():
            self.first_chunk.set_result(True)
        for etype, payload, last_id in self.parser.feed(body):
            if etype != "bench":
                self.other += 1
                continue
            seq = int(last_id)
            if json.loads(payload).get("i") != seq - 1:
                self.mismatch += 1
            if not 0 < seq < len(self.seen):
                self.mismatch += 1
            elif self.seen[seq]:
                self.dups += 1
            else:
                self.seen[seq] = 1
                self.unique += 1
                if seq < self.last:
                    self.disorder += 1
                self.last = max(self.last, seq)


async def _open(spec: dict[str, Any]) -> tuple[list[Watch], dict[str, Any]]:
    loop = asyncio.get_running_loop()
    host, events = spec["host"], spec["events"]
    sem = asyncio.Semaphore(50)
    watches: list[Watch] = []
    errors: list[str] = []

    async def one(port: int, path: str, job: int) -> None:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            f"Cookie: {spec['cookie']}\r\n\r\n"
        ).encode()
        async with sem:
            try:
                watch = Watch(events, request, job)
                await asyncio.wait_for(loop.create_connection(lambda: watch, host, port), 20)
                watches.append(watch)
                await asyncio.wait_for(watch.first_chunk, 90)
            except (OSError, asyncio.TimeoutError) as exc:
                errors.append(repr(exc))

    started = time.monotonic()
    await asyncio.gather(*(one(*conn) for conn in spec["conns"]))
    opened = sum(1 for w in watches if w.first_chunk.done() and w.first_chunk.result())
    return watches, {
        "opened": opened,
        "errors": len(errors) + len(watches) - opened,
        "error_sample": errors[:3],
        "open_seconds": time.monotonic() - started,
    }


async def _collect(watches: list[Watch], events: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(w.unique >= events or w.closed for w in watches):
            break
        await asyncio.sleep(0.05)
    return {
        "watchers": len(watches),
        "received": sum(w.unique for w in watches),
        "duplicated": sum(w.dups for w in watches),
        "out_of_order": sum(w.disorder for w in watches),
        "wrong_payload": sum(w.mismatch for w in watches),
        "other_events": sum(w.other for w in watches),
        "complete": sum(1 for w in watches if w.unique >= events),
        "closed_early": sum(1 for w in watches if w.closed),
        "lost_by_job": dict(Counter(w.job for w in watches for _ in range(events - w.unique))),
    }


def client_main(pipe: Any) -> None:
    """A load-client worker: ``open`` its streams, ``collect`` their counts, ``close``."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        watches: list[Watch] = []
        spec: dict[str, Any] = {}
        while True:
            if not await loop.run_in_executor(None, pipe.poll, 900):
                return
            cmd, arg = pipe.recv()
            if cmd == "open":
                spec = arg
                watches, reply = await _open(spec)
                pipe.send(reply)
            elif cmd == "collect":
                pipe.send(await _collect(watches, spec["events"], float(arg)))
            else:
                for w in watches:
                    if w.transport is not None:
                        w.transport.abort()
                await asyncio.sleep(0.2)
                pipe.send({"closed": True})
                return

    asyncio.run(main())


# -- the publisher process ------------------------------------------------------------------------


def publish_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Publish ``events`` events to each job of ``spec["jobs"]`` (``[job id, batch]``: batch 1
    through ``publish()``, more through ``publish_many()``), the calls of all jobs interleaved
    evenly over ``events × jobs / rate`` seconds, as a pool of task workers would."""
    from benchmarks.schedule import run_sync
    from django_sse import publish, publish_many
    from django_sse.models import Job
    from django_sse.pushing import layer_sender

    events, rate = spec["events"], spec["rate"]
    jobs = [(Job.objects.get(pk=job_id), batch) for job_id, batch in spec["jobs"]]
    calls: list[tuple[float, int, int, int]] = []  # (due fraction, job, first i, count)
    for k, (_job, batch) in enumerate(jobs):
        n_calls = math.ceil(events / batch)
        for c in range(n_calls):
            first = c * batch
            calls.append(((c + 0.5) / n_calls, k, first, min(batch, events - first)))
    calls.sort()
    duration = events * len(jobs) / rate

    def one(index: int, t: float) -> None:
        _due, k, first, count = calls[index]
        job, batch = jobs[k]
        if batch == 1:
            publish(job, "bench", {"t": t, "i": first})
        else:
            publish_many(job, [("bench", {"t": t, "i": i}) for i in range(first, first + count)])

    sys.stdout.write("READY\n")
    sys.stdout.flush()
    ready, _, _ = select.select([sys.stdin], [], [], 120)
    if not ready:
        return {"done": False, "errors": 1, "error_sample": ["no GO within 120 s"]}
    sys.stdin.readline()
    stats = run_sync(len(calls), len(calls) / duration, one, duration + 60)
    stats["calls"] = len(calls)
    stats["events"] = sum(c[3] for c in calls)
    stats["layer_flushed"] = layer_sender.flush(10.0)
    return stats


def start_publisher(env: Any, spec: dict[str, Any]) -> subprocess.Popen[str]:
    from benchmarks import harness

    proc = subprocess.Popen(
        [harness.PY, "-m", "benchmarks.capacity", "publish", "--spec", json.dumps(spec)],
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
        raise RuntimeError(f"publisher failed to start: {line} {err[-2000:]}")
    return proc


# -- the run ---------------------------------------------------------------------------------------


def run(q: dict[str, Any], config: str) -> dict[str, Any]:
    from benchmarks import harness

    harness.raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="django_sse_capacity_"))
    layer = harness.CONFIGS[config]["layer"]
    model = predict(q)
    res: dict[str, Any] = {"config": config, "params": q, "batch": BATCH, "model": model}
    redis_server = OwnRedis(tmp)
    env = harness.Env(config, tmp, q["jobs"] + q["unwatched"])
    env.env.update(BENCH_REDIS=redis_server.url, BENCH_EVENTSTREAM_REDIS="0")
    servers: list[Any] = []
    publishers: list[subprocess.Popen[str]] = []
    ctx = multiprocessing.get_context("spawn")
    pipes: list[Any] = []
    workers: list[Any] = []
    try:
        pg0, redis0 = pg_tables(env.db_name), redis_server.calls()
        servers = [harness.Server(env, tmp) for _ in range(q["processes"])]
        jobs = list(env.jobs)
        # Two task workers, each with every other job.
        for w in range(PUBLISHERS):
            mine = [[jobs[j], batch_of(j)] for j in range(len(jobs)) if j % PUBLISHERS == w]
            share = q["rate"] * len(mine) / len(jobs)
            publishers.append(
                start_publisher(env, {"jobs": mine, "events": q["events"], "rate": share})
            )
        conns = [[servers[p].port, env.path(jobs[j]), j] for j, p in watchers(q)]
        k = 1 if q["watchers"] <= 500 else 2
        for _ in range(k):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(child,), daemon=True)
            proc.start()
            pipes.append(parent)
            workers.append(proc)
        t_open = time.time()
        for i, pipe in enumerate(pipes):
            spec = {"host": harness.HOST, "events": q["events"], "cookie": env.cookie()}
            pipe.send(("open", {**spec, "conns": conns[i::k]}))
        opened = [pipe.recv() for pipe in pipes]
        res["open"] = {
            "opened": sum(o["opened"] for o in opened),
            "errors": sum(o["errors"] for o in opened),
            "error_sample": [e for o in opened for e in o["error_sample"]][:3],
            "open_seconds": max(o["open_seconds"] for o in opened),
        }
        time.sleep(1.5)  # the last group joins and baselines
        redis1 = redis_server.calls()
        t_go = time.time()
        for proc in publishers:
            assert proc.stdin is not None
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        duration = q["events"] * len(jobs) / q["rate"]
        pstats = []
        for proc in publishers:
            out, err = proc.communicate(timeout=duration + 120)
            lines = [x for x in out.splitlines() if x.startswith("{")]
            pstats.append(json.loads(lines[-1]) if lines else {"errors": 1, "stderr": err[-800:]})
        res["publishers"] = pstats
        for pipe in pipes:
            pipe.send(("collect", 60))
        got = [pipe.recv() for pipe in pipes]
        res["publish_seconds"] = time.time() - t_go
        # Every stream stays open past its first session check (HEARTBEAT_SECONDS after it
        # opened), so that the reads of the session checks show in the counts.
        hold_until = t_open + res["open"]["open_seconds"] + HEARTBEAT_SECONDS + 3
        time.sleep(max(0.0, hold_until - time.time()))
        redis2 = redis_server.calls()
        res["redis"] = observe_redis(redis_server, env, servers, jobs, layer)
        res["db_conns_by_process"] = db_conns_by_process(env.db_name, servers)
        res["server_cpu_s"] = [harness.cpu_s(s.pid) for s in servers]
        res["streams_open_s"] = time.time() - t_open
        res["streams_open_min_s"] = time.time() - t_open - res["open"]["open_seconds"]
        res["deliveries"] = merge(got, q)
        res["redis"]["calls_opening"] = diff(redis1, redis0)
        res["redis"]["calls_publishing"] = diff(redis2, redis1)
        for pipe in pipes:
            pipe.send(("close", None))
            with contextlib.suppress(EOFError):
                pipe.recv()
        for s in servers:
            s.stop()
        servers = []
        time.sleep(1.0)  # the servers' backends exit, and flush their statistics
        res["pg"] = {"tables": table_diff(pg_tables(env.db_name), pg0)}
        res["pg"]["database"] = pg_database(env.db_name)
    finally:
        for proc in publishers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for proc in workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        for s in servers:
            s.stop()
        env.close()
        redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res["checks"] = check(res, q, model, layer)
    return res


def merge(got: list[dict[str, Any]], q: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g in got:
        for key, value in g.items():
            if key == "lost_by_job":
                lost = out.setdefault(key, {})
                for job, n in value.items():
                    lost[job] = lost.get(job, 0) + n
            else:
                out[key] = out.get(key, 0) + value
    out["expected"] = q["watchers"] * q["events"]
    out["lost"] = out["expected"] - out["received"]
    return out


def observe_redis(
    redis_server: OwnRedis, env: Any, servers: list[Any], jobs: list[str], layer: str
) -> dict[str, Any]:
    """Subscriptions per server process and per job group, while every stream is open."""
    prefix = env.env["BENCH_PREFIX"]
    groups = [f"{GROUP_PREFIX}.job.{uuid.UUID(j).hex}" for j in jobs]
    client = redis_server.client
    out: dict[str, Any] = {}
    if layer == "pubsub":
        names = [f"{prefix}__group__{g}" for g in groups]
        out["numsub_per_job"] = [int(n) for _name, n in client.pubsub_numsub(*names)]
        by_port = client_ports_of([s.pid for s in servers])
        subs: dict[int, int] = {}
        for c in client.client_list():
            pid = by_port.get(int(c["addr"].rsplit(":", 1)[1]))
            if pid is not None:
                subs[pid] = subs.get(pid, 0) + int(c["sub"])
        out["subscriptions_per_process"] = [subs.get(s.pid, 0) for s in servers]
        out["connections"] = len(client.client_list())
    else:
        out["members_per_job"] = [int(client.zcard(f"{prefix}:group:{g}".encode())) for g in groups]
    return out


def db_conns_by_process(db_name: str, servers: list[Any]) -> list[int]:
    from benchmarks import harness

    with harness.pg_admin() as admin:
        ports = [
            r[0]
            for r in admin.execute(
                "SELECT client_port FROM pg_stat_activity WHERE datname = %s", [db_name]
            ).fetchall()
        ]
    by_port = client_ports_of([s.pid for s in servers])
    count = Counter(by_port.get(port) for port in ports if port is not None)
    return [count.get(s.pid, 0) for s in servers]


def check(res: dict[str, Any], q: dict[str, Any], model: dict[str, Any], layer: str) -> list[Any]:
    """``[name, expected, measured, passed]`` of every exact check."""
    d, r, pg = res["deliveries"], res["redis"], res["pg"]["tables"]
    pub, opening = r["calls_publishing"], r["calls_opening"]
    events_table = pg.get("django_sse_jobevent", {})
    jobs_table = pg.get("django_sse_job", {})
    rows: list[Any] = [
        ["streams opened", q["watchers"], res["open"]["opened"]],
        ["events received", d["expected"], d["received"]],
        ["events lost", 0, d["lost"]],
        ["events duplicated", 0, d["duplicated"]],
        ["events out of order", 0, d["out_of_order"]],
        ["events with another payload", 0, d["wrong_payload"]],
        ["events published", model["events"], sum(p.get("events", 0) for p in res["publishers"])],
        ["PG rows inserted (events)", model["pg_rows_inserted"], events_table.get("ins", 0)],
        ["PG job rows updated (publish calls)", model["pg_job_updates"], jobs_table.get("upd", 0)],
    ]
    if layer == "pubsub":
        rows += [
            ["Redis PUBLISH (layer messages)", model["layer_messages"], pub.get("publish", 0)],
            ["Redis SUBSCRIBE", model["subscribe_calls"], opening.get("subscribe", 0)],
            [
                "subscriptions per process",
                model["subscriptions_per_process"],
                r["subscriptions_per_process"],
            ],
            ["PUBSUB NUMSUB per job", model["numsub_per_job"], r["numsub_per_job"]],
        ]
    else:
        rows += [
            # commandstats counts the commands run inside Lua scripts too; these three are
            # each sent once per occasion, whatever else the layer does.
            [
                "Redis MULTI (a group_send to a watched job)",
                model["watched_messages"],
                pub.get("multi", 0),
            ],
            [
                "Redis ZCOUNT (a message queued per process)",
                model["redis_deliveries"],
                pub.get("zcount", 0),
            ],
            [
                "Redis ZPOPMIN (a message received per process)",
                model["redis_deliveries"],
                pub.get("zpopmin", 0),
            ],
            ["group members per job", model["numsub_per_job"], r["members_per_job"]],
        ]
    return [[name, want, got, want == got] for name, want, got in rows]


def reads_model(res: dict[str, Any], q: dict[str, Any]) -> dict[str, Any]:
    """The reads the model expects over the run, next to PostgreSQL's index scans (each one
    lookup by key). Not checked: statistics reach the views within a second or so, and the
    admission and session-check queries for streams that come together are batched."""
    tables = res["pg"]["tables"]
    model = res["model"]
    open_s = res["streams_open_s"]
    polls = round(q["processes"] * open_s / POLL_SECONDS)
    job_reads = tables.get("django_sse_job", {}).get("idx_scan", 0)
    shortest, longest = res["streams_open_min_s"], open_s
    session_range = [
        q["watchers"] * (1 + int(shortest // HEARTBEAT_SECONDS)),
        q["watchers"] * (1 + int(longest // HEARTBEAT_SECONDS)),
    ]
    return {
        "streams_open_s": [round(shortest, 1), round(open_s, 1)],
        # One at admission, then one per HEARTBEAT_SECONDS (the first heartbeat falls on the
        # admission check's deadline). Each stream is open between the two times.
        # Session checks falling due together read their sessions in one query (database
        # engine): fewer index scans of the session table than checks.
        "session_reads": {
            "checks_range": session_range,
            "observed": tables.get("django_session", {}).get("idx_scan", 0),
        },
        "user_reads": {
            "model_range": session_range,
            "observed": tables.get("auth_user", {}).get("idx_scan", 0),
        },
        # The UPDATE of each publish call, the foreign-key check of each inserted event, the
        # poll of each process every POLL_SECONDS; the rest is admission and session-check
        # batches (one query per batch) and the hub's baselines.
        "job_reads": {
            "updates": model["publish_calls"],
            "fk_checks": model["events"],
            "polls": polls,
            "observed": job_reads,
            "rest": job_reads - model["publish_calls"] - model["events"] - polls,
        },
        "event_reads": tables.get("django_sse_jobevent", {}).get("idx_scan", 0),
        "xact_commit": res["pg"]["database"].get("xact_commit"),
    }


def summary(res: dict[str, Any]) -> str:
    lines = [f"capacity check, {res['config']}, {json.dumps(res['params'])}, batch {BATCH}"]
    for name, want, got, ok in res["checks"]:
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}: expected {want}, measured {got}")
    lines.append(f"  reads: {json.dumps(res['reads'])}")
    lines.append(f"  DB connections per server process: {res['db_conns_by_process']}")
    lines.append(f"  Redis calls while publishing: {json.dumps(res['redis']['calls_publishing'])}")
    cpu = res["server_cpu_s"]
    lines.append(f"  server CPU s per process (whole life): {[round(c, 2) for c in cpu]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("publish")
    p.add_argument("--spec", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--config", default=CONFIGS[0], choices=CONFIGS)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if args.cmd == "publish":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
        import django

        django.setup()
        stats = publish_main(json.loads(args.spec))
        sys.stdout.write(json.dumps(stats) + "\n")
        sys.stdout.flush()
        return 0
    q = dict(QUICK if args.quick else FULL)
    started = time.time()
    res = run(q, args.config)
    res["reads"] = reads_model(res, q)
    res["quick"] = bool(args.quick)
    res["seconds"] = round(time.time() - started, 1)
    res["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = Path(args.out)
    previous: dict[str, Any] = {}
    if out.exists():
        with contextlib.suppress(ValueError):
            previous = json.loads(out.read_text())
    key = f"{args.config}{'-quick' if args.quick else ''}"
    previous[key] = res
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(previous, indent=1, sort_keys=True) + "\n")
    print(summary(res))
    return 0 if all(ok for *_rest, ok in res["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())

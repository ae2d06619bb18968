"""Benchmark orchestrator: starts each server, client workers and publishers, runs the
scenarios and writes results JSON (``report.py`` turns it into RESULTS.md and plots).

    python -m benchmarks.harness [--quick] [--scenario S1 ...] [--config NAME ...]
                                 [--clients K] [--profile] [--out FILE]

Every loop is bounded in count and time; all traffic goes to 127.0.0.1; every process it
starts is stopped (by its own pid) before it returns.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
PY = sys.executable
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# name -> what runs. publish: "thread" (a thread in the server calling django_sse.publish),
# "external" (a separate publisher process), "loop" (a task on the server's event loop).
CONFIGS: dict[str, dict[str, Any]] = {
    # Ours, in the order the full run takes them (most telling first).
    "daphne-pg-pubsub": {"app": "ours", "server": "daphne", "db": "pg", "layer": "pubsub"},
    "daphne-sqlite-mem": {"app": "ours", "server": "daphne", "db": "sqlite", "layer": "mem"},
    "uvicorn-pg-pubsub": {"app": "ours", "server": "uvicorn", "db": "pg", "layer": "pubsub"},
    "granian-pg-pubsub": {"app": "ours", "server": "granian", "db": "pg", "layer": "pubsub"},
    "daphne-sqlite-pubsub": {"app": "ours", "server": "daphne", "db": "sqlite", "layer": "pubsub"},
    "daphne-pg-core": {"app": "ours", "server": "daphne", "db": "pg", "layer": "core"},
    "daphne-pg-mem": {"app": "ours", "server": "daphne", "db": "pg", "layer": "mem"},
    "uvicorn-sqlite-mem": {"app": "ours", "server": "uvicorn", "db": "sqlite", "layer": "mem"},
    "daphne-sqlite-core": {"app": "ours", "server": "daphne", "db": "sqlite", "layer": "core"},
    # Peers.
    "peer-starlette": {"app": "starlette", "server": "uvicorn", "db": None, "layer": None},
    "peer-naive-pubsub": {"app": "naive", "server": "daphne", "db": "sqlite", "layer": "pubsub"},
    "peer-eventstream": {"app": "eventstream", "server": "daphne", "db": "sqlite", "layer": "mem"},
    "peer-raw": {"app": "raw", "server": "raw", "db": None, "layer": None},
    # Ours without DirectWriteMiddleware (Django's response loop for every stream): the
    # reference for what the middleware changes, in S1 and S3 only.
    "ref-plain": {
        "app": "ours",
        "server": "daphne",
        "db": "pg",
        "layer": "pubsub",
        "direct": False,
    },
}
PEERS = [c for c in CONFIGS if c.startswith(("peer-", "ref-"))]
OURS = [c for c in CONFIGS if c not in PEERS]

FULL: dict[str, dict[str, Any]] = {
    "S1": {"subs": 1000, "n": 100, "rate": 20.0},
    "S2": {"subs": 1, "n": 20000, "rate": 0.0, "max_seconds": 60},
    "S2b": {"subs": 1, "n": 100000, "rate": 0.0, "batch": 1000, "max_seconds": 120},
    "S3": {"steps": [500, 1000, 2000], "hold": 10.0},
    "S4": {"subs": 100, "n": 1000, "rate": 200.0},
    "S5": {"n": 100000},
    "S6": {"n": 100000},
    "S7": {"subs": 1, "n": 200, "rate": 20.0},
    "SWEEP": {"subs": [100, 300], "n": 100, "rate": 20.0},
}
QUICK: dict[str, dict[str, Any]] = {
    "S1": {"subs": 100, "n": 30, "rate": 20.0},
    "S2": {"subs": 1, "n": 1000, "rate": 0.0, "max_seconds": 60},
    "S2b": {"subs": 1, "n": 10000, "rate": 0.0, "batch": 1000, "max_seconds": 60},
    "S3": {"steps": [50, 100, 200], "hold": 3.0},
    "S4": {"subs": 20, "n": 200, "rate": 200.0},
    "S5": {"n": 5000},
    "S6": {"n": 10000},
    "S7": {"subs": 1, "n": 40, "rate": 20.0},
    "SWEEP": {"subs": [20, 50], "n": 30, "rate": 20.0},
}
ALL_SCENARIOS = ["S1", "S2", "S2b", "S3", "S4", "S5", "S6", "S7", "SWEEP"]
# S2b (bulk publishing through publish_many) runs on one PostgreSQL and one SQLite
# configuration, both with an external publisher (a task worker, as in production).
S2B_CONFIGS = ("daphne-pg-pubsub", "daphne-sqlite-pubsub")

# -- issue 14: saturation (S8), the reconnect storm (S10), S3 at 10,000 streams ----------------
# S8 and S10 live in saturation.py and storm.py; S3-10k is S3 with larger steps. Peers with a
# thread and a database connection per stream (naive, eventstream) are left out of S3-10k:
# 10,000 threads and SQLite connections measure the thread, not the stream.
FULL["S8"] = {"subs": 1000, "n": 500, "window": 20}
QUICK["S8"] = {"subs": 100, "n": 200, "window": 20}
FULL["S3-10k"] = {"steps": [2000, 5000, 10000], "hold": 10.0}
QUICK["S3-10k"] = {"steps": [500, 1000, 2000], "hold": 3.0}
ALL_SCENARIOS += ["S8", "S10", "S3-10k"]
S8_CONFIGS = ["daphne-pg-pubsub", "uvicorn-pg-pubsub", "granian-pg-pubsub"]
# S9, admission (admission_http.py): that many streams, each on a job with `events` stored.
FULL["S9"] = {"streams": [2000, 10000], "events": 5}
QUICK["S9"] = {"streams": [200, 500], "events": 5}
ALL_SCENARIOS += ["S9"]
# The most open files a process may need: 10,000 streams, their replies, the database.
NOFILE_WANTED = 32768


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file limit (servers and client workers inherit it): the soft
    limit to the hard one, and the hard one to ``NOFILE_WANTED`` where allowed (root)."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NOFILE_WANTED:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_WANTED, NOFILE_WANTED))
            return NOFILE_WANTED, NOFILE_WANTED
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def applies(scenario: str, config: str) -> bool:
    c = CONFIGS[config]
    if scenario in ("S8", "S9", "S10", "S3-10k"):
        return applies_issue14(scenario, config)
    if not c.get("direct", True):
        return scenario in ("S1", "S3")
    if scenario == "S2b":
        return config in S2B_CONFIGS
    if scenario in ("S5", "S6"):
        return c["app"] == "ours"
    if scenario == "S7":
        return publish_path(config) == "external"
    return True


def applies_issue14(scenario: str, config: str) -> bool:
    c = CONFIGS[config]
    if scenario == "S8":
        return config in S8_CONFIGS or (config in PEERS and c.get("direct", True))
    if scenario == "S10":
        from benchmarks import storm

        return storm.applies(c)
    if scenario == "S9":
        from benchmarks import admission_http

        return admission_http.applies(config)
    # S3-10k
    return config in S8_CONFIGS or config in ("peer-starlette", "peer-raw")


def publish_path(config: str) -> str:
    c = CONFIGS[config]
    if c["app"] == "ours":
        return "thread" if c["layer"] == "mem" else "external"
    if c["app"] in ("naive", "eventstream"):
        return "external"
    return "loop"


# -- /proc ---------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """RSS of ``pid`` and its live descendants (Granian's worker is a child process: its main
    process alone stays flat whatever the streams hold)."""
    return sum(_own_rss_kb(p) for p in [pid, *_descendants(pid)])


def _own_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def threads(pid: int) -> int:
    """Threads of ``pid`` and its live descendants (see ``rss_kb``)."""
    return sum(_own_threads(p) for p in [pid, *_descendants(pid)])


def _own_threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (Granian serves from a worker process
    of its own: its main process alone would count nothing)."""
    return sum(_own_cpu_s(p) for p in [pid, *_descendants(pid)])


def _own_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    found += [int(child), *_descendants(int(child))]
    return found


def fds_to(pid: int, path: str) -> int:
    target = os.path.realpath(path)
    n = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    n += 1
    return n


def nofile_of(pid: int) -> int | None:
    """The soft open-file limit of a running process (checks that the raise reached it)."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pg_admin() -> Any:
    import psycopg

    return psycopg.connect(
        host=HOST,
        port=5432,
        user="postgres",
        dbname="postgres",
        autocommit=True,
        connect_timeout=5,
    )


# -- the environment of one configuration ---------------------------------------------------------


class Env:
    """Database, Redis prefix, user/session/jobs for one configuration."""

    def __init__(self, config: str, tmp: Path, jobs: int) -> None:
        self.config = config
        self.c = CONFIGS[config]
        self.run_id = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.tmp = tmp
        self.db_name = ""
        self.env = dict(os.environ)
        self.env.update(
            DJANGO_SETTINGS_MODULE="benchmarks.settings",
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            BENCH_LAYER=self.c["layer"] or "mem",
            BENCH_PREFIX=f"django_sse_bench_{self.run_id}",
            BENCH_DIRECT="1" if self.c.get("direct", True) else "0",
        )
        self.session = ""
        self.jobs: list[str] = []
        self._next_job = 0
        if self.c["db"] == "pg":
            self.db_name = f"django_sse_bench_{self.run_id}"
            with pg_admin() as admin:
                admin.execute(f'CREATE DATABASE "{self.db_name}"')
            self.env["BENCH_DB"] = "pg:" + self.db_name
        elif self.c["db"] == "sqlite":
            self.db_name = str(tmp / f"{config}.sqlite3")
            self.env["BENCH_DB"] = "sqlite:" + self.db_name
        if self.c["db"]:
            out = self.tool("setup", "--jobs", str(jobs))
            self.session, self.jobs = out["session"], out["jobs"]
        else:
            self.jobs = [f"topic{i}" for i in range(jobs)]

    def tool(self, *args: str, timeout: float = 300) -> Any:
        done = subprocess.run(
            [PY, "-m", "benchmarks.djtool", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"djtool {args} failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def new_job(self) -> str:
        job = self.jobs[self._next_job]
        self._next_job += 1
        return job

    def db_conns(self, server_pid: int) -> int | None:
        if self.c["db"] == "pg":
            with pg_admin() as admin:
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.db_name]
                ).fetchone()
            return int(row[0])
        if self.c["db"] == "sqlite":
            return fds_to(server_pid, self.db_name)
        return None

    def path(self, job: str) -> str:
        app = self.c["app"]
        if app == "ours":
            return f"/sse/jobs/{job}/events/"
        if app == "naive":
            return f"/naive/events/?topic={job}"
        if app == "eventstream":
            return f"/es/events/?channel={job}"
        return "/events"

    def cookie(self) -> str:
        return f"sessionid={self.session}" if self.session else ""

    def close(self) -> None:
        if self.c["db"] == "pg":
            with contextlib.suppress(Exception), pg_admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        if self.c["layer"] in ("core", "pubsub"):
            with contextlib.suppress(Exception):
                import redis

                client = redis.Redis(host=HOST, port=6379, socket_timeout=5)
                keys = list(client.scan_iter(f"{self.env['BENCH_PREFIX']}*", count=1000))[:100000]
                if keys:
                    client.delete(*keys)
                client.close()


# -- the server ----------------------------------------------------------------------------------


class Server:
    def __init__(self, env: Env, log_dir: Path, port: int | None = None) -> None:
        # ``port``: start again where a killed server listened (S10's restart).
        self.port = port or free_port()
        c = env.c
        if c["server"] == "daphne":
            cmd = [
                PY,
                "-m",
                "daphne",
                # The same listen backlog as uvicorn and Granian get below (Twisted's default
                # is 50: a burst of connections overflows it and the kernel drops SYNs, which
                # the client retries a second later).
                "-e",
                f"tcp:port={self.port}:interface={HOST}:backlog=4096",
                "-v",
                "0",
                "benchmarks.asgi:application",
            ]
        elif c["server"] == "uvicorn":
            app = (
                "benchmarks.peers.starlette_app:app"
                if c["app"] == "starlette"
                else "benchmarks.asgi:application"
            )
            cmd = [
                PY,
                "-m",
                "uvicorn",
                app,
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--lifespan",
                "off",
                "--no-access-log",
                "--log-level",
                "warning",
                "--backlog",
                "4096",
            ]
        elif c["server"] == "granian":
            # As its docs start it: one worker, the ASGI interface (a server django_sse does not
            # know: each connection carries MAX_BUFFERED_BYTES, then the client resumes).
            cmd = [
                PY,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--log-level",
                "warning",
                "--backlog",
                "4096",
                "benchmarks.asgi:application",
            ]
        else:
            cmd = [
                PY,
                "-m",
                "benchmarks.peers.raw_server",
                "--port",
                str(self.port),
                "--lifetime",
                "1800",
            ]
        self.log_path = log_dir / f"server-{env.config}-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.pid = self.proc.pid
        self.listening_at = 0.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    self.listening_at = time.time()
                    break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("server did not listen within 30 s")
        time.sleep(0.3)

    def get(self, path: str, timeout: float = 10) -> Any:
        with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}", timeout=timeout) as r:
            return json.loads(r.read())

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-1500:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- client workers ------------------------------------------------------------------------------


class Clients:
    def __init__(self, k: int) -> None:
        from benchmarks.client import worker_main

        ctx = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(k):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child,), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def cpu(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs if p.pid)

    def call(
        self, cmd: str, specs: list[dict[str, Any]], timeout: float, sample: Any = None
    ) -> list[dict[str, Any]]:
        for pipe, spec in zip(self.pipes, specs, strict=False):
            pipe.send((cmd, spec))
        replies: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(replies) < len(self.pipes) and time.monotonic() < deadline:
            pending = [p for i, p in enumerate(self.pipes) if i not in replies]
            for p in mp_wait(pending, timeout=0.05):
                replies[self.pipes.index(p)] = p.recv()  # type: ignore[arg-type]
            if sample is not None:
                sample()
        if len(replies) < len(self.pipes):
            raise RuntimeError(f"client workers did not answer {cmd} within {timeout} s")
        return [replies[i] for i in range(len(self.pipes))]

    def open(
        self,
        env: Env,
        server: Server,
        total: int,
        n_expected: int,
        path: str,
        event_type: str = "bench",
        mode: str = "bench",
        extra: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        k = len(self.pipes)
        shares = [total // k + (1 if i < total % k else 0) for i in range(k)]
        specs = [
            {
                "host": HOST,
                "port": server.port,
                "path": path,
                "cookie": env.cookie(),
                "count": s,
                "n_expected": n_expected,
                "event_type": event_type,
                "mode": mode,
                "concurrency": 50,
                "sub_timeout": 90,
            }
            for s in shares
        ]
        for spec, more in zip(specs, extra or [], strict=False):
            spec.update(more)
        replies = self.call("open", specs, timeout=240)
        merged: dict[str, Any] = {}
        for r in replies:
            for key, value in r.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    merged[key] = (
                        max(merged.get(key, 0), value)
                        if key.endswith("seconds")
                        else merged.get(key, 0) + value
                    )
                else:
                    merged.setdefault(key, [])
                    merged[key] += value if isinstance(value, list) else [value]
        return merged

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("close", [{} for _ in self.pipes], timeout=15)
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(2)


def merge_collect(replies: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"lat": [], "recv_i": [], "recv_t": []}
    for r in replies:
        for key in ("lat", "recv_t"):
            a = array.array("d")
            a.frombytes(r[key])
            out[key].extend(a)
        a = array.array("l")
        a.frombytes(r["recv_i"])
        out["recv_i"].extend(a)
        for key, value in r.items():
            if key in ("lat", "recv_i", "recv_t"):
                continue
            if key in ("first_recv",):
                vals = [x[key] for x in replies if x[key]]
                out[key] = min(vals) if vals else 0.0
            elif key in ("last_recv", "last_progress"):
                out[key] = max(x[key] for x in replies)
            elif key == "progress_done_at":
                vals = [x[key] for x in replies if x[key]]
                out[key] = min(vals) if vals else None
            elif isinstance(value, (int, float)):
                out[key] = out.get(key, 0) + value
    return out


# -- publishers ----------------------------------------------------------------------------------


class Publisher:
    """Starts publishing for one scenario along the config's path; ``result()`` waits for it."""

    def __init__(
        self,
        env: Env,
        server: Server,
        config: str,
        target: str,
        n: int,
        rate: float,
        mode: str = "events",
        max_seconds: float = 600,
        credit: bool = False,
        batch: int = 1000,
    ) -> None:
        # credit: publish event i only once told "CREDIT n" with n > i (S8's pacing).
        self.path = publish_path(config)
        self.server = server
        self.proc: subprocess.Popen[str] | None = None
        self.run = secrets.token_hex(4)
        self.args = (target, n, rate, mode, max_seconds)
        if self.path == "external":
            kind = {"ours": "ours", "naive": "naive", "eventstream": "eventstream"}[env.c["app"]]
            self.proc = subprocess.Popen(
                [
                    PY,
                    "-m",
                    "benchmarks.publisher",
                    "--kind",
                    kind,
                    "--target",
                    target,
                    "--n",
                    str(n),
                    "--rate",
                    str(rate),
                    "--mode",
                    mode,
                    "--max-seconds",
                    str(max_seconds),
                    *(["--credit"] if credit else []),
                    "--batch",
                    str(batch),
                ],
                cwd=ROOT,
                env=env.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()  # READY (bounded: the tool exits on errors)
            if line.strip() != "READY":
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"publisher failed to start: {line} {err[-2000:]}")
        self.started_at = 0.0

    def go(self) -> None:
        self.started_at = time.time()
        target, n, rate, mode, max_seconds = self.args
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("GO\n")
            self.proc.stdin.flush()
        elif self.path == "thread":
            self.server.get(
                f"/bench/publish/?run={self.run}&job={target}&n={n}&rate={rate}"
                f"&mode={mode}&max={max_seconds}"
            )
        else:
            self.server.get(f"/bench/publish?run={self.run}&n={n}&rate={rate}&max={max_seconds}")

    def cpu(self) -> float:
        return cpu_s(self.proc.pid) if self.proc is not None else 0.0

    def give(self, credit: int) -> None:
        """Let an external publisher with ``credit`` publish events up to ``credit`` - 1."""
        if self.proc is not None and self.proc.stdin is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write(f"CREDIT {credit}\n")
                self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        if self.proc is not None:
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate(timeout=5)
                return {"done": False, "errors": 1, "error_sample": ["publisher timed out"]}
            lines = [x for x in out.strip().splitlines() if x.startswith("{")]
            if not lines:
                return {"done": False, "errors": 1, "error_sample": [err[-1500:]]}
            return json.loads(lines[-1])
        deadline = time.monotonic() + timeout
        stats_path = "/bench/stats/" if self.path == "thread" else "/bench/stats"
        while time.monotonic() < deadline:
            stats = self.server.get(f"{stats_path}?run={self.run}")
            if stats.get("done"):
                return stats
            time.sleep(0.2)
        return {"done": False, "errors": 1, "error_sample": ["in-process publisher timed out"]}

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# -- profiling -----------------------------------------------------------------------------------


class Profiler:
    def __init__(self, pid: int, out: Path, seconds: float) -> None:
        spy = Path(PY).parent / "py-spy"
        self.out = out
        self.proc = subprocess.Popen(
            [
                str(spy),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--format",
                "raw",
                "--rate",
                "200",
                "-o",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self) -> dict[str, Any]:
        try:
            _o, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return {"error": "py-spy timed out"}
        if not self.out.exists():
            return {"error": f"py-spy wrote nothing: {err[-500:]}"}
        return top_frames(self.out)


def top_frames(path: Path, k: int = 12) -> dict[str, Any]:
    self_counts: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [f.strip() for f in stack.split(";")]
        # drop the thread/process header frame py-spy puts first
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c

    def top(d: dict[str, int]) -> list[tuple[str, float]]:
        return (
            [
                (f, round(100.0 * c / total, 1))
                for f, c in sorted(d.items(), key=lambda x: -x[1])[:k]
            ]
            if total
            else []
        )

    return {
        "samples": total,
        "self": top(self_counts),
        "inclusive": top(incl),
        "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
    }


# -- scenarios -----------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.p = QUICK if args.quick else FULL
        self.tmp = Path(tempfile.mkdtemp(prefix="django_sse_bench_"))
        self.results: list[dict[str, Any]] = []
        self.profile_dir = BENCH / "profiles"

    def base(self, scenario: str, config: str, env: Env, server: Server) -> dict[str, Any]:
        return {
            "scenario": scenario,
            "config": config,
            "publish_path": publish_path(config),
            "server_pid": server.pid,
            "rss_start_kb": rss_kb(server.pid),
            "threads_start": threads(server.pid),
            "quick": bool(self.args.quick),
        }

    def fanout(
        self,
        scenario: str,
        config: str,
        env: Env,
        subs: int,
        n: int,
        rate: float,
        max_seconds: float = 600,
        batch: int = 0,
    ) -> dict[str, Any]:
        """``batch`` > 0: publish through ``publish_many``, that many events to a call (S2b)."""
        server = Server(env, self.tmp)
        clients = Clients(max(1, min(self.args.clients, subs)))
        publisher: Publisher | None = None
        res = self.base(scenario, config, env, server)
        res.update(subscribers=subs, n=n, rate=rate)
        if batch:
            res["batch"] = batch
        profiler = None
        try:
            job = env.new_job()
            publisher = Publisher(
                env,
                server,
                config,
                job,
                n,
                rate,
                mode="bulk" if batch else "events",
                max_seconds=max_seconds,
                batch=batch or 1000,
            )
            opened = clients.open(env, server, subs, n, env.path(job))
            res.update(open=opened)
            time.sleep(1.0)  # let the last subscriptions settle (group join, baseline read)
            res.update(
                rss_subscribed_kb=rss_kb(server.pid),
                threads_subscribed=threads(server.pid),
                db_conns_subscribed=env.db_conns(server.pid),
            )
            cpu0, ccpu0 = cpu_s(server.pid), clients.cpu()
            peak = [res["rss_subscribed_kb"]]

            def sample() -> None:
                peak[0] = max(peak[0], rss_kb(server.pid))

            if self.args.profile:
                dur = min(10.0, (n / rate) if rate else 10.0)
                profiler = Profiler(
                    server.pid, self.profile_dir / f"{scenario}-{config}.txt", max(2.0, dur)
                )
            publisher.go()
            expect_s = (n / rate) if rate > 0 else max_seconds
            got = merge_collect(
                clients.call(
                    "collect",
                    [{"timeout": expect_s + 15}] * len(clients.pipes),
                    timeout=expect_s + 60,
                    sample=sample,
                )
            )
            pub_cpu = publisher.cpu()
            pstats = publisher.result(timeout=max_seconds + 30)
            if pstats.get("publisher_cpu_s") is None:
                pstats["publisher_cpu_s"] = pub_cpu or None
            res.update(self.summarize(got, pstats, subs, n, rate))
            res.update(
                server_cpu_s=cpu_s(server.pid) - cpu0,
                client_cpu_s=clients.cpu() - ccpu0,
                rss_peak_kb=peak[0],
                rss_end_kb=rss_kb(server.pid),
                threads_end=threads(server.pid),
                db_conns_end=env.db_conns(server.pid),
                publisher=pstats,
            )
            if batch:
                res["persisted_events_per_s"] = pstats.get("persisted_events_per_s")
            if res["deliveries_per_s"] and res["server_cpu_s"]:
                res["server_cpu_us_per_delivery"] = (
                    1e6 * res["server_cpu_s"] / max(1, res["received"])
                )
            if profiler is not None:
                res["profile"] = profiler.finish()
        finally:
            if publisher is not None:
                publisher.kill()
            clients.close()
            res["server_log_tail"] = server.log_tail()[-600:]
            server.stop()
        return res

    @staticmethod
    def summarize(
        got: dict[str, Any], pstats: dict[str, Any], subs: int, n: int, rate: float
    ) -> dict[str, Any]:
        lat = got["lat"]
        # A publisher stopped by its time cap published fewer: count those as expected.
        published = pstats.get("published")
        expected = subs * (published if isinstance(published, int) else n)
        out: dict[str, Any] = {
            "connections": got.get("connections", 0),
            "still_open": got.get("open", 0),
            "expected": expected,
            "received": got.get("received", 0),
            "lost": expected - got.get("received", 0),
            "duplicated": got.get("dups", 0),
            "unexpected": got.get("unexpected", 0),
            "http_errors": got.get("http_errors", 0),
            "disconnects": got.get("disconnects", 0),
            "complete_conns": got.get("complete_conns", 0),
        }
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            v = pct(lat, q)
            out[f"lat_{name}_ms"] = None if v is None else 1000 * v
        out["lat_max_ms"] = 1000 * max(lat) if lat else None
        t_first = pstats.get("t_first")
        if t_first and got.get("last_recv"):
            span = got["last_recv"] - t_first
            out["deliveries_per_s"] = got["received"] / span if span > 0 else None
            out["receive_span_s"] = span
        else:
            out["deliveries_per_s"] = None
        t0 = pstats.get("t0")
        if rate > 0 and t0:
            sched = [
                t - (t0 + i / rate) for t, i in zip(got["recv_t"], got["recv_i"], strict=False)
            ]
            out["sched_lat_p50_ms"] = 1000 * pct(sched, 0.5)  # type: ignore[operator]
            out["sched_lat_p99_ms"] = 1000 * pct(sched, 0.99)  # type: ignore[operator]
        return out

    def s3(self, config: str, env: Env, scenario: str = "S3") -> dict[str, Any]:
        steps, hold = self.p[scenario]["steps"], self.p[scenario]["hold"]
        server = Server(env, self.tmp)
        clients = Clients(1)
        res = self.base(scenario, config, env, server)
        profiler = None
        try:
            job = env.new_job()
            curve = [
                {
                    "streams": 0,
                    "rss_kb": rss_kb(server.pid),
                    "threads": threads(server.pid),
                    "db_conns": env.db_conns(server.pid),
                }
            ]
            opened_total = 0
            cpu0 = cpu_s(server.pid)
            t_open = time.monotonic()
            for step in steps:
                o = clients.open(env, server, step - opened_total, 1, env.path(job))
                opened_total = step
                time.sleep(1.5)
                curve.append(
                    {
                        "streams": step,
                        "subscribed": o["subscribed"],
                        "rss_kb": rss_kb(server.pid),
                        "threads": threads(server.pid),
                        "db_conns": env.db_conns(server.pid),
                        "open_seconds": o["open_seconds"],
                        "connect_errors": o["connect_errors"],
                        "http_errors": o["http_errors"],
                    }
                )
            open_s = time.monotonic() - t_open
            open_cpu = cpu_s(server.pid) - cpu0
            if self.args.profile:
                profiler = Profiler(
                    server.pid, self.profile_dir / f"{scenario}-{config}.txt", max(2.0, hold - 1)
                )
            hold_cpu0 = cpu_s(server.pid)
            time.sleep(hold)
            status = clients.call("status", [{}], timeout=30)[0]
            top = steps[-1]
            res.update(
                streams=top,
                curve=curve,
                still_open=status["open"],
                subscribed=status["subscribed"],
                disconnects=status["disconnects"],
                rss_held_kb=rss_kb(server.pid),
                nofile_limit=nofile_of(server.pid),
                client_nofile_limit=min(nofile_of(p.pid or 0) or 0 for p in clients.procs),
                threads_held=threads(server.pid),
                db_conns_held=env.db_conns(server.pid),
                open_all_seconds=open_s,
                server_cpu_open_s=open_cpu,
                server_cpu_hold_s=cpu_s(server.pid) - hold_cpu0,
                client_cpu_s=clients.cpu(),
            )
            res["rss_per_stream_kb"] = (res["rss_held_kb"] - curve[0]["rss_kb"]) / top
            if profiler is not None:
                res["profile"] = profiler.finish()
        finally:
            clients.close()
            res["server_log_tail"] = server.log_tail()[-600:]
            server.stop()
        return res

    def s5(self, config: str, env: Env) -> dict[str, Any]:
        n = self.p["S5"]["n"]
        job = env.new_job()
        filled = env.tool("fill", job, str(n))
        server = Server(env, self.tmp)
        clients = Clients(1)
        res = self.base("S5", config, env, server)
        res.update(n=n, fill=filled)
        profiler = None
        try:
            rss0 = rss_kb(server.pid)
            samples: list[tuple[float, int]] = []

            def sample() -> None:
                samples.append((time.time(), rss_kb(server.pid)))

            if self.args.profile:
                profiler = Profiler(server.pid, self.profile_dir / f"S5-{config}.txt", 5)
            cpu0 = cpu_s(server.pid)
            t_open = time.time()
            pipe = clients.pipes[0]
            pipe.send(
                (
                    "open",
                    {
                        "host": HOST,
                        "port": server.port,
                        "path": env.path(job),
                        "cookie": env.cookie(),
                        "count": 1,
                        "n_expected": n,
                        "sub_timeout": 60,
                    },
                )
            )
            deadline = time.monotonic() + 90
            while not pipe.poll(0.05) and time.monotonic() < deadline:
                sample()
            opened = pipe.recv()
            got = merge_collect(
                clients.call("collect", [{"timeout": 120}], timeout=180, sample=sample)
            )
            span = (got["last_recv"] - t_open) if got["last_recv"] else None
            peak = max([r for _t, r in samples] + [rss0])
            res.update(
                open=opened,
                received=got["received"],
                lost=n - got["received"],
                duplicated=got["dups"],
                replay_seconds=span,
                events_per_s=(got["received"] / span) if span else None,
                rss_before_kb=rss0,
                rss_peak_kb=peak,
                rss_end_kb=rss_kb(server.pid),
                rss_growth_kb=peak - rss0,
                server_cpu_s=cpu_s(server.pid) - cpu0,
                client_cpu_s=clients.cpu(),
                threads_end=threads(server.pid),
                db_conns_end=env.db_conns(server.pid),
                rss_samples=[(round(t - t_open, 3), r) for t, r in samples[::4]],
            )
            if profiler is not None:
                res["profile"] = profiler.finish()
        finally:
            clients.close()
            res["server_log_tail"] = server.log_tail()[-600:]
            server.stop()
        return res

    def s6(self, config: str, env: Env) -> dict[str, Any]:
        n = self.p["S6"]["n"]
        server = Server(env, self.tmp)
        clients = Clients(1)
        res = self.base("S6", config, env, server)
        res.update(n=n)
        publisher = None
        try:
            job = env.new_job()
            publisher = Publisher(env, server, config, job, n, 0.0, mode="progress")
            opened = clients.open(
                env, server, 1, n, env.path(job), event_type="progress", mode="progress"
            )
            time.sleep(1.0)
            publisher.go()
            got = merge_collect(clients.call("collect", [{"timeout": 120}], timeout=180))
            pstats = publisher.result(timeout=150)
            done_at = got.get("progress_done_at")
            res.update(
                open=opened,
                publisher=pstats,
                task_seconds=pstats.get("task_seconds"),
                loop_seconds=pstats.get("loop_seconds"),
                rows_written=pstats.get("rows_written"),
                last_value_received=got.get("last_progress"),
                last_value_delivered=got.get("last_progress") == n,
                progress_events_received=got.get("other_events", 0) + got["received"],
                last_value_latency_ms=(
                    1000 * (done_at - pstats["flush_end"])
                    if done_at and pstats.get("flush_end")
                    else None
                ),
            )
        finally:
            if publisher is not None:
                publisher.kill()
            clients.close()
            res["server_log_tail"] = server.log_tail()[-600:]
            server.stop()
        return res

    def run_config(self, config: str, scenarios: list[str]) -> None:
        todo = [s for s in scenarios if applies(s, config)]
        if not todo:
            return
        print(f"== {config}: {' '.join(todo)}", flush=True)
        # 24 for the first scenarios, 2 x 20 for S10's two storms.
        env = Env(config, self.tmp, jobs=64)
        try:
            for scenario in todo:
                started = time.monotonic()
                try:
                    results = self.run_scenario(scenario, config, env)
                except Exception as exc:
                    results = [{"scenario": scenario, "config": config, "error": repr(exc)}]
                for r in results:
                    r["load_avg"] = os.getloadavg()
                    r["wall_s"] = round(time.monotonic() - started, 1)
                    self.results.append(r)
                    print("   ", one_line(r), flush=True)
                self.save()
        finally:
            env.close()

    def run_scenario(self, scenario: str, config: str, env: Env) -> list[dict[str, Any]]:
        p = self.p
        if scenario in ("S1", "S4", "S7", "S2", "S2b"):
            q = p[scenario]
            return [
                self.fanout(
                    scenario,
                    config,
                    env,
                    q["subs"],
                    q["n"],
                    q["rate"],
                    q.get("max_seconds", 600),
                    batch=q.get("batch", 0),
                )
            ]
        if scenario == "SWEEP":
            q = p["SWEEP"]
            return [self.fanout(f"SWEEP-{s}", config, env, s, q["n"], q["rate"]) for s in q["subs"]]
        if scenario == "S3":
            return [self.s3(config, env)]
        if scenario == "S5":
            return [self.s5(config, env)]
        if scenario == "S6":
            return [self.s6(config, env)]
        if scenario in ("S8", "S9", "S10", "S3-10k"):
            return self.run_issue14(scenario, config, env)
        raise ValueError(scenario)

    def run_issue14(self, scenario: str, config: str, env: Env) -> list[dict[str, Any]]:
        if scenario == "S8":
            from benchmarks import saturation

            return [saturation.run(self, config, env)]
        if scenario == "S9":
            from benchmarks import admission_http

            return admission_http.run(self, config, env)
        if scenario == "S10":
            from benchmarks import storm

            return [storm.run(self, config, env, shape) for shape in storm.SHAPES]
        return [self.s3(config, env, "S3-10k")]

    def save(self) -> None:
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        data = {"args": vars(self.args), "results": self.results}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(out)

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def one_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['scenario']}: ERROR {r['error'][:300]}"
    keys = [
        "connections",
        "received",
        "lost",
        "duplicated",
        "lat_p50_ms",
        "lat_p99_ms",
        "deliveries_per_s",
        "rss_per_stream_kb",
        "threads_held",
        "db_conns_held",
        "events_per_s",
        "persisted_events_per_s",
        "rss_growth_kb",
        "task_seconds",
        "last_value_delivered",
        "server_cpu_s",
        # issue 14
        "server_cpu_us_per_delivery",
        "restarted",
        "reconnects",
        "catch_up_max_s",
        "beyond_retry_max_s",
        "streams",
        "admitted_s",
        "first_event_p99_ms",
        "failed",
        "skipped",
    ]
    parts = []
    for k in keys:
        if r.get(k) is not None:
            v = r[k]
            parts.append(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}")
    pub = r.get("publisher") or {}
    if pub.get("rate_achieved"):
        parts.append(f"pub_rate={pub['rate_achieved']:.0f}/s")
    return f"{r['scenario']}: " + " ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenario", action="append", choices=ALL_SCENARIOS)
    parser.add_argument("--config", action="append", choices=list(CONFIGS))
    parser.add_argument("--clients", type=int, default=1, help="client worker processes")
    parser.add_argument("--profile", action="store_true", help="py-spy the server")
    parser.add_argument("--out", default=str(BENCH / "results" / "results.json"))
    args = parser.parse_args()
    nofile = raise_nofile()
    print(f"open-file limit: {nofile[0]} (hard {nofile[1]})", flush=True)
    scenarios = args.scenario or ALL_SCENARIOS
    configs = args.config or list(CONFIGS)
    # Peers first: every ratio is against a peer measured in the same run.
    configs = [c for c in configs if c in PEERS] + [c for c in configs if c not in PEERS]
    runner = Runner(args)
    runner.profile_dir.mkdir(exist_ok=True)
    try:
        for config in configs:
            runner.run_config(config, scenarios)
    finally:
        runner.save()
        runner.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

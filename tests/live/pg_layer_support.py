"""Helpers of ``test_pg_layer.py``: a site on PostgreSQL with channels_postgres as the channel
layer (``tests.live.pg_layer_settings``), a PostgreSQL server of the test's own on a spare port (to
stop and start again; the shared server is never touched), counts of the layer's database
connections, and one helper process:

``python -m tests.live pg-layer events JOB_ID --bytes B --count K [--interval S]``
    Publish K ``padded`` events whose data holds B padding characters, S seconds apart (0.1 by
    default), from this process (``DJANGO_SETTINGS_MODULE=tests.live.pg_layer_settings``); print one
    JSON line ``{"seq": ..., "type": ..., "t": <time.time() after commit>}`` per event.

Servers, publishers and subscribers are those of ``tests.live.topology_support``. Every process
started here is registered in a :class:`~tests.live.topology_support.Processes` and stopped at
teardown; every wait is bounded; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live.processes import (
    ROOT,
    free_port,
    pg_connect,
    pg_database,
    port_open,
    run_id,
    run_module,
    wait_until,
)
from tests.live.services import DATABASE_URL, require
from tests.live.topology_support import Processes, Site

SETTINGS = "tests.live.pg_layer_settings"
# A traceback, an ERROR or CRITICAL record, or a 5xx answer in a server's log.
SERVER_ERRORS = re.compile(r"Traceback|\bERROR\b|CRITICAL|Internal Server Error|\" 5\d\d ")


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI=true requires it)", pytrace=False)
    pytest.skip(message)


def require_postgres() -> str:
    """The URL of the shared PostgreSQL (``DATABASE_URL``, or ``tests.live.services``' default when
    it names no PostgreSQL); fails under CI=true and skips elsewhere when it is unreachable."""
    default = "postgres://postgres@127.0.0.1:5432/test"
    url = DATABASE_URL if DATABASE_URL.startswith("postgres") else default
    return require("PostgreSQL", url, 5432)


def require_channels_postgres() -> None:
    if importlib.util.find_spec("channels_postgres") is None:
        _missing("channels_postgres is not installed (pip install -e '.[postgres]')")


# -- a site -----------------------------------------------------------------------------------


def layer_env(
    site: Site, *, poll_seconds: float, heartbeat_seconds: float, app_name: str = ""
) -> dict[str, str]:
    """The environment of a server or publisher of ``site`` on the PostgreSQL layer."""
    env = site.env(poll_seconds=poll_seconds, heartbeat_seconds=heartbeat_seconds)
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS
    env["DJANGO_SSE_PG_LAYER_APP"] = app_name or f"django_sse_pglayer_{site.run_id}"
    return env


@contextlib.contextmanager
def make_pg_site(database_url: str, jobs: int, log_dir: Path) -> Iterator[Site]:
    """A fresh database on the server of ``database_url``, migrated (the layer's tables and
    trigger included), with an owner, their session and ``jobs`` unused jobs; dropped at the
    end."""
    rid = run_id()
    site = Site(database_url, "", f"django_sse_pgl_{rid}", rid, log_dir, "", [])
    with pg_database(database_url, site.db_name):
        env = layer_env(site, poll_seconds=1, heartbeat_seconds=15)
        made = json.loads(run_module(env, "tests.live", "e2e", "setup", "--jobs", str(jobs)))
        site.owner_session = made["owner_session"]
        site.jobs = list(made["jobs"])
        yield site


def layer_connections(site: Site, app_name: str) -> int:
    """How many connections named ``app_name`` the site's database server has open."""
    with pg_connect(site.database_url) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app_name]
        ).fetchone()
    return int(count)


# -- a PostgreSQL server of the test's own ------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The directory of ``initdb`` and ``postgres`` (Debian keeps them out of PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("postgres")
    if on_path:
        candidates.insert(0, str(Path(on_path).parent))
    for directory in candidates:
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "postgres").is_file():
            return Path(directory)
    _missing("the PostgreSQL server executables (initdb, postgres) are not installed")
    raise AssertionError("unreachable")


class PostgresServer:
    """A PostgreSQL cluster of the test's own in a temporary directory, on a spare port of
    127.0.0.1, run in the foreground as a child process (so it is stopped by its PID). As root
    it runs as the ``postgres`` user, which PostgreSQL requires."""

    def __init__(self, processes: Processes, log_dir: Path) -> None:
        self.bin_dir = postgres_bin_dir()
        self.processes = processes
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="django_sse_pgl_cluster_"))
        self.log_path = log_dir / f"postgres-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                _missing("running as root, and there is no 'postgres' user to run PostgreSQL")
            shutil.chown(self.data_dir, "postgres", "postgres")
            self._prefix = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        done = subprocess.run(
            [
                *self._prefix,
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir / "data"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"initdb failed:\n{done.stdout}\n{done.stderr}"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        try:
            with pg_connect(self.url) as db:
                db.execute("SELECT 1")
            return True
        except Exception:
            return False

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.process = self.processes.add(
                subprocess.Popen(
                    [
                        *self._prefix,
                        str(self.bin_dir / "postgres"),
                        "-D",
                        str(self.data_dir / "data"),
                        "-p",
                        str(self.port),
                        "-k",
                        str(self.data_dir),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "max_connections=200",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        process = self.process
        wait_until(lambda: process.poll() is not None or self.ready(), timeout=30, interval=0.1)
        assert self.ready(), f"PostgreSQL did not start:\n{self.log_path.read_text()}"

    def stop(self) -> None:
        """A fast shutdown (SIGINT: every session is ended, as ``pg_ctl restart -m fast`` and
        ``systemctl restart postgresql`` do)."""
        process = self.process
        assert process is not None and process.poll() is None
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        assert not port_open(self.port)

    def remove(self) -> None:
        """Stop it if it runs, and delete its files."""
        if self.process is not None and self.process.poll() is None:
            self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


# -- the helper process -------------------------------------------------------------------------


def publish_padded(job_id: str, size: int, count: int, interval: float) -> None:
    from django_sse import publish

    for i in range(count):
        event = publish(job_id, "padded", {"i": i, "pad": "x" * size})
        line = {"seq": event.seq, "type": event.type, "t": time.time()}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        time.sleep(interval)


def start_padded(
    env: dict[str, str], job_id: str, size: int, count: int, interval: float = 0.1
) -> subprocess.Popen[str]:
    """``python -m tests.live pg-layer events`` in a process of its own."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.live",
            "pg-layer",
            "events",
            job_id,
            "--bytes",
            str(size),
            "--count",
            str(count),
            "--interval",
            str(interval),
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_times(out: str) -> dict[int, float]:
    """``{seq: commit time}`` from the JSON lines of a publisher."""
    return {int(r["seq"]): float(r["t"]) for r in map(json.loads, out.splitlines())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.live pg-layer")
    commands = parser.add_subparsers(dest="command", required=True)
    events = commands.add_parser("events")
    events.add_argument("job_id")
    events.add_argument("--bytes", type=int, required=True)
    events.add_argument("--count", type=int, default=1)
    events.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS)
    import django

    django.setup()
    publish_padded(args.job_id, args.bytes, args.count, args.interval)
    return 0

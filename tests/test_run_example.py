"""``scripts/run-example`` stops cleanly: Ctrl-C (SIGINT to the script's whole process group, as
a terminal sends it) or a lone TERM to the script, in the middle of a report, ends the report as
cancelled with a line in its log, stops the worker and the server, and prints no traceback.

The script runs on a SQLite file of its own (``SQLITE_PATH``) with the test's interpreter
(``EXAMPLE_PYTHON``: no virtualenv made, nothing installed). Every wait is bounded; all traffic
goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.live.browser_support import unavailable
from tests.live.processes import ROOT, child_env, free_port, read_log, wait_listening, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.runexample, pytest.mark.timeout(120)]

SCRIPT = ROOT / "scripts" / "run-example"
MANAGE = str(ROOT / "example_project" / "manage.py")
# Long enough that the report is still running when the signal comes, short enough that the
# test is quick: 60 steps of 0.2 s.
STEPS = 60
STEP_SECONDS = "0.2"
ENQUEUE = f"""
from django_sse.models import Job
from example_project.reports.tasks import run_report
job = Job.objects.create(name="Interrupted report")
run_report.enqueue(job_id=str(job.pk), steps={STEPS})
print(job.pk.hex)
"""


@dataclass
class Example:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    database: Path
    output: Path

    def log(self) -> str:
        return read_log(self.output)

    def children(self) -> list[int]:
        """The pids whose parent is the script (the worker, the server, a sleep)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                # The fields after the command name (which may hold spaces): state, ppid, ...
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid:
                    pids.append(int(stat.parent.name))
        return pids

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def log_lines(self, job_hex: str) -> list[str]:
        rows = self.query(
            "SELECT data FROM django_sse_jobevent WHERE job_id = ? AND type = 'log' ORDER BY seq",
            job_hex,
        )
        return [json.loads(str(data))["line"] for (data,) in rows]

    def status(self, job_hex: str) -> str:
        rows = self.query("SELECT status FROM django_sse_job WHERE id = ?", job_hex)
        return str(rows[0][0]) if rows else ""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count: it has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Example]:
    if find_spec("django_tasks_db") is None:
        unavailable('the example\'s dependencies are not installed (pip install -e ".[example]")')
    if not Path("/proc/self/stat").exists():
        unavailable("/proc is needed to find the script's processes")
    port = free_port()
    env = child_env(
        DJANGO_SETTINGS_MODULE="example_project.settings",
        EXAMPLE_PYTHON=sys.executable,
        SQLITE_PATH=str(tmp_path / "example.sqlite3"),
        PORT=str(port),
        REPORT_STEP_SECONDS=STEP_SECONDS,
        DATABASE_URL="",
        REDIS_URL="",
    )
    output = tmp_path / "run-example.log"
    with open(output, "wb") as out:
        # A session of its own: its process group stands for a terminal's foreground group.
        process = subprocess.Popen(
            ["bash", str(SCRIPT)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    site = Example(process, env, tmp_path / "example.sqlite3", output)
    children: list[int] = []
    try:
        # Migrating a new database comes first: up to a minute on a busy machine.
        wait_listening(process, port, site.log, timeout=90, name="run-example")
        # The script's banner: it has seen the server answer too, and waits for a signal.
        assert wait_until(lambda: "Press Ctrl-C to stop." in site.log(), 30), site.log()
        children = site.children()
        yield site
    finally:
        children += site.children()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        for pid in children:
            if alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def start_report(site: Example) -> str:
    done = subprocess.run(
        [sys.executable, MANAGE, "shell", "--verbosity", "0", "--command", ENQUEUE],
        cwd=ROOT,
        env=site.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    job_hex = done.stdout.strip().splitlines()[-1]
    assert uuid.UUID(hex=job_hex)
    return job_hex


@pytest.mark.parametrize(
    "interrupt",
    [
        pytest.param(lambda pid: os.killpg(pid, signal.SIGINT), id="ctrl-c-to-the-group"),
        pytest.param(lambda pid: os.kill(pid, signal.SIGTERM), id="term-to-the-script"),
    ],
)
def test_stopping_mid_report_cancels_it_cleanly(example: Example, interrupt) -> None:
    job_hex = start_report(example)
    # Mid-report: a few steps done, many to go.
    assert wait_until(lambda: len(example.log_lines(job_hex)) >= 2, timeout=60), example.log()
    assert example.status(job_hex) == "running"
    children = example.children()
    assert len(children) >= 2, children  # the worker and the server

    interrupt(example.process.pid)
    returncode = example.process.wait(30)

    output = example.log()
    assert "Traceback" not in output, output
    assert "SystemExit" not in output, output
    assert returncode in (130, 143), output
    assert "Stopping the server and the worker" in output
    assert "Still running after" not in output  # each stopped on its one TERM, no KILL
    assert example.status(job_hex) == "cancelled", output
    last_line = example.log_lines(job_hex)[-1]
    assert last_line.startswith("Stopped before step "), last_line
    assert last_line.endswith("the worker was shut down."), last_line
    # The task framework's record of the report's task: it returned (not FAILED).
    tasks = example.query("SELECT status FROM django_tasks_database_dbtaskresult")
    assert tasks == [("SUCCESSFUL",)]
    assert [pid for pid in children if alive(pid)] == []


def test_ctrl_c_between_reports_stops_cleanly(example: Example) -> None:
    # The worker is up and idle.
    assert wait_until(lambda: "Starting worker" in example.log(), timeout=30), example.log()
    children = example.children()

    os.killpg(example.process.pid, signal.SIGINT)
    returncode = example.process.wait(30)

    output = example.log()
    assert returncode == 130, output
    assert "Traceback" not in output, output
    assert "Still running after" not in output
    # The worker got one signal: a graceful stop, never the "terminating current task" of a
    # second one.
    assert "shutting down gracefully" in output, output
    assert "terminating current task" not in output, output
    assert [pid for pid in children if alive(pid)] == []

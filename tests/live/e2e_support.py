"""Shared pieces of the end-to-end modules: a live server's handle and the check of its log
(``test_e2e_daphne.py``, ``test_topology.py``); for ``test_faults.py`` and ``test_celery.py`` a
PostgreSQL database per run, the environment of the helper processes, and a Daphne server with
its logs.

The fault and Celery modules always use PostgreSQL (``DATABASE_URL``, or ``tests.live.services``'
default); the database server is only ever reached on the address of that URL (127.0.0.1 in these
tests).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.live import processes, services
from tests.live.processes import (
    child_env,
    free_port,
    pg_database,
    read_log,
    run_id,
    start_daphne,
    stop_process,
    wait_listening,
)

# Anything django_sse warns about is unexpected in these scenarios.
SERVER_ERRORS = re.compile(
    r"Traceback|\bERROR\b|CRITICAL|took too long to shut down|WARNING django_sse"
)


# What a server django_sse does not know makes it say once (it is no error there).
UNKNOWN_SERVER_WARNING = re.compile(
    r".*WARNING django_sse Streams are served by a server django_sse cannot read back-pressure.*\n?"
)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    owner_session: str
    other_session: str
    # A server django_sse does not know (Granian): it warns once that it cannot read back-pressure.
    unknown = False  # (not a field: LoggedServer adds fields of its own)

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, job_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/sse/jobs/{job_id}/events/"

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def log(self, since: int = 0) -> str:
        return read_log(self.log_path, since)

    def assert_no_errors(self, since: int) -> None:
        text = UNKNOWN_SERVER_WARNING.sub("", self.log(since)) if self.unknown else self.log(since)
        assert not SERVER_ERRORS.search(text), f"server log has errors:\n{text}"
        assert self.process.poll() is None, f"server died:\n{text}"


# A traceback, an ERROR or CRITICAL record, or a response the browser would give up on.
TRACEBACK_OR_ERROR = re.compile(r"Traceback|\bERROR\b|CRITICAL|Internal Server Error")
SERVER_ERROR_STATUS = re.compile(r'" 5\d\d ')


def pg_params() -> dict[str, Any]:
    return processes.pg_params(services.DATABASE_URL)


def pg_connect(dbname: str) -> Any:
    return processes.pg_connect(services.DATABASE_URL, dbname)


def pg_url(port: int | None = None) -> str:
    """A ``DATABASE_URL`` for the helper processes (``e2e_settings`` replaces the name), to the
    real server or, with ``port``, to a proxy in front of it on 127.0.0.1."""
    params = pg_params()
    auth = params["user"] + (f":{params['password']}" if params["password"] else "")
    host = "127.0.0.1" if port is not None else params["host"]
    return f"postgres://{auth}@{host}:{port or params['port']}/postgres"


@contextlib.contextmanager
def run_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped afterwards (even with open
    connections)."""
    with pg_database(services.DATABASE_URL, f"{prefix}_{run_id()}") as name:
        yield name


def process_env(**values: str) -> dict[str, str]:
    """The test process's environment, minus the switches the helper processes must not
    inherit, plus ``values``."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
        and not k.startswith("DJANGO_SSE_")
    }
    return child_env(inherited, **values)


@dataclass
class LoggedServer(Server):
    access_path: Path

    def access_log(self) -> str:
        return self.access_path.read_text("utf-8", "replace")

    def assert_clean(self, since: int = 0) -> None:
        """No traceback, no ERROR record and no 5xx response; the server still runs."""
        text = self.log(since)
        assert not TRACEBACK_OR_ERROR.search(text), f"server log has errors:\n{text}"
        access = self.access_log()
        assert not SERVER_ERROR_STATUS.search(access), f"a 5xx response:\n{access}"
        assert self.process.poll() is None, f"server died:\n{text}"


@contextlib.contextmanager
def daphne(env: dict[str, str], owner_session: str, other_session: str) -> Iterator[LoggedServer]:
    """A Daphne server in a subprocess; its stderr (the ``django_sse`` log) and its access log
    go to files. Stopped (SIGTERM, then SIGKILL) at the end."""
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="django_sse_faults_log_"))
    log_path = log_dir / "daphne.log"
    access_path = log_dir / "access.log"
    access_path.touch()
    with open(log_path, "wb") as log:
        process = start_daphne(
            port, env, stdout=subprocess.DEVNULL, stderr=log, access_log=access_path
        )
    try:
        wait_listening(process, port, log_path.read_text)
        yield LoggedServer(process, port, log_path, owner_session, other_session, access_path)
    finally:
        stop_process(process)
        shutil.rmtree(log_dir, ignore_errors=True)

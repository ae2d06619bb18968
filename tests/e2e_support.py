"""Shared pieces of ``test_faults.py`` and ``test_celery.py``: a PostgreSQL database per run,
the environment of the helper processes, and a Daphne server with its logs.

Both modules always use PostgreSQL (``DATABASE_URL``, or ``tests.services``' default); the
database server is only ever reached on the address of that URL (127.0.0.1 in these tests).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tests import services
from tests.test_e2e_daphne import ROOT, Server, _stop, free_port, wait_until

# A traceback, an ERROR or CRITICAL record, or a response the browser would give up on.
TRACEBACK_OR_ERROR = re.compile(r"Traceback|\bERROR\b|CRITICAL|Internal Server Error")
SERVER_ERROR_STATUS = re.compile(r'" 5\d\d ')


def run_id() -> str:
    return f"{os.getpid()}_{secrets.token_hex(4)}"


def pg_params() -> dict[str, Any]:
    url = urlparse(services.DATABASE_URL)
    return {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "password": url.password or "",
    }


def pg_connect(dbname: str) -> Any:
    import psycopg

    return psycopg.connect(**pg_params(), dbname=dbname, autocommit=True, connect_timeout=5)


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
    from psycopg import sql

    name = f"{prefix}_{run_id()}"
    with pg_connect("postgres") as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with pg_connect("postgres") as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def process_env(**values: str) -> dict[str, str]:
    """The test process's environment, minus the switches the helper processes must not
    inherit, plus ``values``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
        and not k.startswith("DJANGO_SSE_")
    }
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        PYTHONUNBUFFERED="1",
    )
    env.update(values)
    return env


def run_module(env: dict[str, str], module: str, *args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{module} {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


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
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "--access-log",
                str(access_path),
                "tests.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:

        def listening() -> bool:
            if process.poll() is not None:
                return True  # died: stop waiting
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(listening, timeout=20, interval=0.1)
        assert process.poll() is None, f"Daphne exited:\n{log_path.read_text()}"
        assert listening(), f"Daphne did not listen within 20 s:\n{log_path.read_text()}"
        yield LoggedServer(process, port, log_path, owner_session, other_session, access_path)
    finally:
        _stop(process)
        shutil.rmtree(log_dir, ignore_errors=True)

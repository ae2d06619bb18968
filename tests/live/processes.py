"""Shared helpers of the end-to-end tests: ports, bounded waits, subprocesses (Daphne, the
``python -m tests.live e2e publish`` publisher, the other ``python -m tests.live`` tools), their
environment and logs, a PostgreSQL database per run and Redis keys left by a run.

Every wait is bounded in time and in count; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[2]
ASGI_APPLICATION = "tests.asgi:application"

T = TypeVar("T")


def run_id() -> str:
    """A name part unique to this run (process id and random hex)."""
    return f"{os.getpid()}_{secrets.token_hex(4)}"


# -- waiting ----------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Call ``predicate`` until it returns something truthy or ``timeout`` passes; returns the
    last value (bounded in time and in the number of calls)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    for _ in range(int(timeout / interval) + 1):
        if value or time.monotonic() >= deadline:
            break
        time.sleep(interval)
        value = predicate()
    return value


# -- ports ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    """Whether something accepts a TCP connection on 127.0.0.1:``port`` (0.5 s at most)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_listening(
    process: subprocess.Popen[Any],
    port: int,
    log: Callable[[], str],
    timeout: float = 20,
    interval: float = 0.1,
    name: str = "Daphne",
) -> None:
    """Wait (at most ``timeout`` s) until ``process`` listens on ``port``; fails with ``log()``
    if it exited or does not listen by then."""
    wait_until(lambda: process.poll() is not None or port_open(port), timeout, interval)
    assert process.poll() is None, f"{name} exited:\n{log()}"
    assert port_open(port), f"{name} did not listen within {timeout} s:\n{log()}"


# -- processes --------------------------------------------------------------------------------


def child_env(base: Mapping[str, str] | None = None, **values: str) -> dict[str, str]:
    """The environment of a helper process: ``base`` (the test process's environment by
    default) with the project on ``PYTHONPATH``, unbuffered output, and ``values``."""
    env = dict(os.environ if base is None else base)
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        PYTHONUNBUFFERED="1",
    )
    env.update(values)
    return env


def stop_process(process: subprocess.Popen[Any], timeout: float = 5, signals: int = 1) -> None:
    """SIGTERM (``signals`` times, ``timeout`` seconds apart), then SIGKILL; reaped, each wait
    bounded by ``timeout``."""
    for _ in range(signals):
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    if process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)


def close_pipes(process: subprocess.Popen[Any]) -> None:
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def run_module(env: dict[str, str], module: str, *args: str, timeout: float = 60) -> str:
    """``python -m module args`` to its end (bounded); asserts exit 0, returns its stdout."""
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


def start_daphne(
    port: int,
    env: dict[str, str],
    *,
    stdout: IO[bytes] | int,
    stderr: IO[bytes] | int,
    application: str = ASGI_APPLICATION,
    access_log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A Daphne server on 127.0.0.1:``port`` (Daphne writes its access log to stdout unless
    ``access_log`` names a file); see :func:`wait_listening`."""
    options = ["--access-log", str(access_log)] if access_log is not None else []
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            *options,
            application,
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )


def start_publisher(
    env: dict[str, str], job_id: str, steps: int, interval: float
) -> subprocess.Popen[str]:
    """``python -m tests.live e2e publish``: one JSON line per committed event on stdout."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.live",
            "e2e",
            "publish",
            job_id,
            "--steps",
            str(steps),
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


def read_log(path: Path, since: int = 0) -> str:
    """The file's text from byte ``since`` on (undecodable bytes replaced)."""
    with open(path, "rb") as f:
        f.seek(since)
        return f.read().decode("utf-8", "replace")


# -- PostgreSQL -------------------------------------------------------------------------------


def pg_params(database_url: str) -> dict[str, Any]:
    url = urlparse(database_url)
    return {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "password": url.password or "",
    }


def pg_connect(database_url: str, dbname: str = "postgres") -> Any:
    """An autocommit connection to ``dbname`` on the server of ``database_url``."""
    import psycopg

    return psycopg.connect(
        **pg_params(database_url), dbname=dbname, autocommit=True, connect_timeout=5
    )


def create_database(database_url: str, name: str) -> None:
    from psycopg import sql

    with pg_connect(database_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(database_url: str, name: str) -> None:
    """Drop ``name`` if it exists, even with open connections."""
    from psycopg import sql

    with pg_connect(database_url) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextlib.contextmanager
def pg_database(database_url: str, name: str) -> Iterator[str]:
    """The PostgreSQL database ``name``, created now and dropped afterwards."""
    create_database(database_url, name)
    try:
        yield name
    finally:
        drop_database(database_url, name)


# -- Redis ------------------------------------------------------------------------------------


def delete_redis_keys(url: str, pattern: str, timeout: float = 5) -> int:
    """Delete the keys matching ``pattern`` on the Redis of ``url``; returns their count."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


# -- the ASGI servers the live tests run on -----------------------------------------------------

# Each as its documentation starts it. uvicorn: ``uvicorn[standard]``'s uvloop and httptools,
# named so a missing one fails rather than falling back to asyncio and h11. Granian: its ASGI
# interface (its default is RSGI), HTTP/1.1 and HTTP/2 on one port (``--http auto``, the default).
SERVER_KINDS = ("daphne", "uvicorn", "granian")


def server_command(
    kind: str,
    port: int,
    application: str = ASGI_APPLICATION,
    *,
    access_log: Path | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The command line of a ``kind`` server of ``application`` on 127.0.0.1:``port``."""
    if kind == "daphne":
        options = ["--access-log", str(access_log)] if access_log is not None else []
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), *options,
                *extra, application]  # fmt: skip
    if kind == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", application, "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--lifespan", "off", "--no-access-log", *extra,
        ]  # fmt: skip
    if kind == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
            "--port", str(port), "--no-ws", *extra, application,
        ]  # fmt: skip
    raise ValueError(f"unknown server kind {kind!r}")


def start_server(
    kind: str,
    port: int,
    env: dict[str, str],
    *,
    stdout: IO[bytes] | int,
    stderr: IO[bytes] | int,
    application: str = ASGI_APPLICATION,
    access_log: Path | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """A ``kind`` server (see :data:`SERVER_KINDS`) on 127.0.0.1:``port``; see
    :func:`wait_listening`. Granian's master process forks its worker: stop the master (its
    PID here), which stops the worker."""
    return subprocess.Popen(
        server_command(kind, port, application, access_log=access_log, extra=extra),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )


def worker_pid(process: subprocess.Popen[Any], timeout: float = 10) -> int:
    """The PID of the first child of ``process`` (Granian's worker, which serves the requests
    and whose memory counts), waiting for it up to ``timeout``; ``process``'s own if none."""

    def children() -> list[int]:
        path = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

    found = wait_until(children, timeout)
    return found[0] if found else process.pid

"""The test matrix: lint + types, then the suite on each Django and each service setup.

    nox                      # everything
    nox -s tests-3.11        # Django 5.2 on Python 3.11 only
    nox -s lint

Each tests session runs the suite three times: SQLite + in-memory layer, PostgreSQL + Redis
core layer, PostgreSQL + Redis pub/sub layer. DATABASE_URL and REDIS_URL name the services
(default: postgres://postgres@127.0.0.1:5432/test and redis://127.0.0.1:6379/0). A service that
cannot be reached skips its runs with a message naming it, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

# Python -> Django: Django 6 needs Python 3.12+.
MATRIX = {"3.11": "django>=5.2,<6.0", "3.12": "django>=6.0,<6.2"}


def reachable(url: str, default_port: int) -> bool:
    parts = urlparse(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("-e", ".[test]", MATRIX["3.11"])
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "django_sse", "tests", "example_project")
    session.install("docutils")
    for document in ("README.rst", "CHANGELOG.rst"):
        session.run("python", "-m", "docutils", "--halt=warning", document, os.devnull)


@nox.session(python=list(MATRIX))
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]", MATRIX[str(session.python)])
    session.run("python", "-c", "import django; print('Django', django.get_version())")
    args = session.posargs or ["-p", "no:cacheprovider"]
    env_base = {"DATABASE_URL": "", "REDIS_URL": "", "REDIS_LAYER": ""}
    session.run("pytest", *args, env=env_base)

    missing = [
        name
        for name, url, port in (
            ("PostgreSQL", DATABASE_URL, 5432),
            ("Redis", REDIS_URL, 6379),
        )
        if not reachable(url, port)
    ]
    if missing:
        where = ", ".join(missing)
        message = f"{where} not reachable ({DATABASE_URL}, {REDIS_URL})"
        if os.environ.get("CI"):
            session.error(f"{message}: CI=true requires every service.")
        session.warn(f"Skipping the PostgreSQL + Redis runs: {message}.")
        return
    for layer in ("core", "pubsub"):
        env = {"DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL, "REDIS_LAYER": layer}
        session.run("pytest", *args, env=env)

"""The test matrix: lint and types, the full suite on each Django, and a compatibility run on
every other supported Python.

    nox                          # everything
    nox -s tests-3.11            # Django 5.2 on Python 3.11, every service setup
    nox -s lint
    nox -s docs                  # the Sphinx site in docs/, warnings as errors
    nox -s package               # build, twine check, install the wheel alone, smoke-test it
    nox -s compat                # the quick suite on the other Pythons
    nox -s quick                 # the inner loop: lint, types, unit + ASGI tests on SQLite

Each ``tests`` session runs the suite three times: SQLite + in-memory layer, PostgreSQL + Redis
core layer, PostgreSQL + Redis pub/sub layer (tests marked ``pgredis`` always use PostgreSQL and
Redis, so they run in the last two only). The live-server suites run only where they matter
(``ONLY_IN``): the end-to-end and browser tests on SQLite and in the 3.11 pub/sub cell, the
abuse, PostgreSQL-layer, other-server and network-namespace suites once, the run-example and
Quick start tests once per Python. DATABASE_URL
and REDIS_URL name the services (default: postgres://postgres@127.0.0.1:5432/test and
redis://127.0.0.1:6379/0). A service that cannot be reached skips its runs with a message
naming it, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import nox

nox.options.sessions = ["lint", "docs", "package", "tests", "compat"]
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))
# The stdlib venv: virtualenv cannot resolve some pyenv builds (3.10 here).
nox.options.default_venv_backend = "venv"

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

DJANGO_52 = "django>=5.2,<6.0"
DJANGO_6 = "django>=6.0,<6.2"  # Django 6 needs Python 3.12+
# The full suite, services and browser included: one session per Django version.
FULL = {"3.11": DJANGO_52, "3.12": DJANGO_6}
# The quick suite (no subprocess servers, no browser) on the other supported Pythons.
COMPAT = [("3.10", DJANGO_52), ("3.12", DJANGO_52), ("3.13", DJANGO_52), ("3.13", DJANGO_6)]


def reachable(url: str, default_port: int) -> bool:
    parts = urlparse(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


# The suites that start servers, browsers, services or projects of their own: what the quick
# loop leaves to the full run.
LIVE_MARKERS = (
    "e2e",
    "browser",
    "abuse",
    "servers",
    "netns",
    "pgredis",
    "pglayer",
    "runexample",
    "quickstart",
)
QUICK_MARKERS = " and ".join(f"not {marker}" for marker in LIVE_MARKERS)


def check_code(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "django_sse", "tests", "example_project")


@nox.session(python="3.11")
def quick(session: nox.Session) -> None:
    """The inner loop, a few minutes: lint, types, then the unit, ASGI and JavaScript tests on
    SQLite with the in-memory layer (no server, browser or service). Not part of the default
    run, which runs all of it and more."""
    session.install("-e", ".[test,example]", DJANGO_52)
    check_code(session)
    args = session.posargs or ["-p", "no:cacheprovider"]
    env = {"DATABASE_URL": "", "REDIS_URL": "", "REDIS_LAYER": ""}
    session.run("pytest", *args, "-m", QUICK_MARKERS, env=env)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("-e", ".[test,example]", DJANGO_52)
    check_code(session)
    session.install("docutils")
    for document in ("README.rst", "CHANGELOG.rst"):
        session.run("python", "-m", "docutils", "--halt=warning", document, os.devnull)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]", DJANGO_52)
    # -E: a fresh environment each time, so warnings of unchanged pages are reported again.
    session.run(
        "sphinx-build", "-W", "--keep-going", "-E", "-b", "html", "docs", "docs/_build/html"
    )


@nox.session(python="3.11")
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel (the wheel from the sdist), ``twine check`` them, install
    the wheel alone into a fresh virtualenv and smoke-test it from an empty directory: the files
    it ships, then a job's event streamed by Daphne (tests/package_smoke.py)."""
    session.install("build>=1.2", "twine>=5")
    root = Path(__file__).resolve().parent
    work = Path(session.create_tmp()).resolve() / "package"
    shutil.rmtree(work, ignore_errors=True)
    dist, venv, run = work / "dist", work / "venv", work / "run"
    run.mkdir(parents=True)
    session.run("python", "-m", "build", "--outdir", str(dist), str(root))
    [sdist], [wheel] = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    session.run("twine", "check", "--strict", str(sdist), str(wheel))
    # The stdlib venv of the session's interpreter: nothing but pip and the wheel's dependencies.
    session.run("python", "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    session.run(python, "-m", "pip", "install", "--quiet", str(wheel), external=True)
    with session.chdir(run):
        session.run(
            python,
            "-I",  # neither the script's directory nor PYTHON* variables on sys.path
            str(root / "tests" / "package_smoke.py"),
            str(wheel),
            str(sdist),
            str(root / "django_sse"),
            external=True,
            env={"DJANGO_SETTINGS_MODULE": "", "PYTHONPATH": ""},
        )


# Where each suite marked below runs, as (Python, cell) pairs (None: every Python); everything
# else runs in every cell. The live-server suites run where they matter, to keep CI within its
# time:
# - ``e2e`` and ``browser``: on SQLite (what a user starts with) in each Python, and on
#   PostgreSQL + Redis pub/sub (the production topology) in 3.11;
# - ``abuse`` (Daphne, uvicorn and Granian under attack) and ``pglayer`` (channels_postgres,
#   and Redis for its comparison): once, on PostgreSQL + Redis pub/sub;
# - ``servers`` (uvicorn and Granian: the e2e smoke tests, one browser test each, shutdown with
#   open streams, the HTTP/2 page; docs/testing.rst, "Servers"): once, on pub/sub;
# - ``netns``: once, on SQLite (a server inside a namespace reaches no service);
# - ``runexample``, ``quickstart``: SQLite projects of their own, once per Python.
# Tests marked ``pgredis`` (the topology, fault and Celery suites, live servers included) are
# what the PostgreSQL + Redis cells are for: they run in each of them, the core layer's too.
ONLY_IN: dict[str, tuple[tuple[str | None, str], ...]] = {
    "abuse": (("3.11", "pubsub"),),
    "pglayer": (("3.11", "pubsub"),),
    "servers": (("3.11", "pubsub"),),
    "netns": (("3.11", "sqlite"),),
    "runexample": ((None, "sqlite"),),
    "quickstart": ((None, "sqlite"),),
    "browser": ((None, "sqlite"), ("3.11", "pubsub")),
    "e2e": ((None, "sqlite"), ("3.11", "pubsub")),
}
# Excluded markers that never take pgredis tests with them.
KEEPS_PGREDIS = {"e2e"}


def markers(python: str, cell: str, base: str = "") -> str:
    """The ``-m`` expression of one pytest run of the ``tests`` session."""
    parts = [base] if base else []
    for marker, places in ONLY_IN.items():
        if any(where == cell and py in (None, python) for py, where in places):
            continue
        parts.append(f"(not {marker} or pgredis)" if marker in KEEPS_PGREDIS else f"not {marker}")
    return " and ".join(parts)


@nox.session(python=list(FULL))
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test,example]", FULL[str(session.python)])
    session.run("python", "-c", "import django; print('Django', django.get_version())")
    args = session.posargs or ["-p", "no:cacheprovider"]
    python = str(session.python)
    no_services = {"DATABASE_URL": "", "REDIS_URL": "", "REDIS_LAYER": ""}
    session.run("pytest", *args, "-m", markers(python, "sqlite", "not pgredis"), env=no_services)

    missing = [
        name
        for name, url, port in (("PostgreSQL", DATABASE_URL, 5432), ("Redis", REDIS_URL, 6379))
        if not reachable(url, port)
    ]
    if missing:
        message = f"{', '.join(missing)} not reachable ({DATABASE_URL}, {REDIS_URL})"
        if os.environ.get("CI"):
            session.error(f"{message}: CI=true requires every service.")
        session.warn(f"Skipping the PostgreSQL + Redis runs: {message}.")
        return
    for layer in ("core", "pubsub"):
        env = {"DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL, "REDIS_LAYER": layer}
        session.run("pytest", *args, "-m", markers(python, layer), env=env)


@nox.session(python=False)
@nox.parametrize(("version", "django"), COMPAT)
def compat(session: nox.Session, version: str, django: str) -> None:
    # A plain stdlib venv: nox's interpreter discovery cannot resolve some pyenv builds.
    interpreter = shutil.which(f"python{version}")
    if interpreter is None:
        message = f"Python {version} is not installed"
        if os.environ.get("CI"):
            session.error(f"{message}: CI=true requires it.")
        session.skip(message)
    venv = os.path.join(".nox", f"compat-{version}-django{'5.2' if django == DJANGO_52 else '6'}")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        session.run(interpreter, "-m", "venv", venv, external=True)
    session.run(python, "-m", "pip", "install", "-q", "-e", ".[test]", django, external=True)
    session.run(python, "-c", "import django; print('Django', django.get_version())", external=True)
    env = {"DATABASE_URL": "", "REDIS_URL": "", "REDIS_LAYER": ""}
    args = session.posargs or ["-p", "no:cacheprovider"]
    # The quick loop's tests, and the Quick start's project on each Python.
    marker = "not e2e and not browser and not pgredis"
    session.run(python, "-m", "pytest", *args, "-m", marker, env=env, external=True)

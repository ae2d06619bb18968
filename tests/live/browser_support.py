"""Support for ``test_browser.py``: the example site in subprocesses, and what the browser needs.

``ExampleSite`` runs the example project the way ``scripts/run-example`` does (``migrate``,
``create_demo_users``, a ``db_worker`` process, Daphne), on a database of its own: a SQLite file
in a temporary directory, or a PostgreSQL database created for the run when ``DATABASE_URL`` is
set (dropped at the end). ``REDIS_URL`` is passed through (the example then uses the Redis
layer). Each process writes its stdout and stderr to a file: Daphne's access log (one line per
*completed* response) and the ``django_sse`` INFO lines (``Stream opened: job=... resume=N``)
are what the tests read.

Every wait is bounded in time and in count; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest

from tests.live.processes import (
    ROOT,
    child_env,
    create_database,
    drop_database,
    free_port,
    pg_connect,
    read_log,
    run_id,
    start_daphne,
    start_server,
    stop_process,
    wait_listening,
)

ARTIFACTS = ROOT / "tests" / "artifacts"
MANAGE = str(ROOT / "example_project" / "manage.py")
SETTINGS_MODULE = "example_project.settings"
# The example's application (it serves its static files itself while DEBUG is on);
# BROWSER_ASGI_APPLICATION names another one.
ASGI_APPLICATION = os.environ.get("BROWSER_ASGI_APPLICATION", "example_project.asgi:application")

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
USE_POSTGRES = DATABASE_URL.startswith(("postgres://", "postgresql://"))
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Anything the example's processes log at these levels is unexpected in the browser scenarios.
SERVER_ERRORS = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|WARNING django_sse")


def unavailable(message: str) -> None:
    """A missing browser or service: a failure under CI=true, a skip elsewhere."""
    if CI:
        pytest.fail(f"{message} (CI=true requires it)", pytrace=False)
    pytest.skip(message)


def check_browser() -> None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        unavailable(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable(
            "Playwright for Python is not installed (pip install playwright): it drives "
            f"Chromium ({CHROMIUM}) for the browser tests"
        )


def check_services() -> None:
    if USE_POSTGRES:
        try:
            with pg_connect(DATABASE_URL):
                pass
        except Exception as exc:
            unavailable(f"PostgreSQL not reachable at DATABASE_URL={DATABASE_URL}: {exc}")
    if REDIS_URL:
        try:
            import redis

            client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            unavailable(f"Redis not reachable at REDIS_URL={REDIS_URL}: {exc}")


# -- the database -----------------------------------------------------------------------------


def _pg_url(db_name: str) -> str:
    return urlunparse(urlparse(DATABASE_URL)._replace(path=f"/{db_name}"))


# -- the server's log -------------------------------------------------------------------------

# Daphne's access log: '127.0.0.1:51234 - - [23/Nov/2026:22:52:47] "GET /path?query" 200 1525'.
ACCESS_LINE = re.compile(r'^\S+ - - \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d+)')
STREAM_OPENED = re.compile(
    r"Stream opened: job=(?P<job>[0-9a-f-]{36}) user=(?P<user>\S+) resume=(?P<resume>\d+)"
)
# The stream of all of a visitor's jobs (what the template tag's bars share).
SESSION_STREAM_OPENED = re.compile(r"Session stream opened: user=(?P<user>\S+)")
# A 404's job id is the request's, untrusted: logged quoted ('...'); a 429 names a real job bare.
STREAM_REFUSED = re.compile(
    r"Stream refused: job=(?P<quote>'?)(?P<job>[^'\s]+)(?P=quote) user=(?P<user>\S+) "
    r"reason=(?P<reason>.+)$"
)


@dataclass
class AccessEntry:
    method: str
    path: str
    status: int


@dataclass
class LogFile:
    path: Path

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def text(self, since: int = 0) -> str:
        if not self.path.exists():
            return ""
        return read_log(self.path, since)

    def access(self, path_prefix: str, since: int = 0) -> list[AccessEntry]:
        """Completed responses to paths starting with ``path_prefix``. Daphne writes a line when
        a response ends: a stream the client left (a reload, a closed page) or that died with
        the server has none; ``streams_opened`` sees those."""
        entries = []
        for line in self.text(since).splitlines():
            match = ACCESS_LINE.match(line)
            if match and match["path"].startswith(path_prefix):
                entries.append(AccessEntry(match["method"], match["path"], int(match["status"])))
        return entries

    def _django_sse_lines(self, pattern: re.Pattern[str], since: int) -> list[dict[str, str]]:
        """Matches of ``pattern`` in django_sse's log lines. Under the ``daphne`` command each
        line is printed twice (the example's handler, then the root logger Daphne sets up:
        reported), with the same time stamp: those pairs count once."""
        found = []
        seen: set[tuple[str, str]] = set()
        for line in self.text(since).splitlines():
            match = pattern.search(line)
            if match is None:
                continue
            key = (line[:23], match.group(0))  # "2026-11-23 22:56:24,817" and the message
            if key not in seen:
                seen.add(key)
                found.append(match.groupdict())
        return found

    def django_sse_lines(self, pattern: re.Pattern[str], since: int = 0) -> list[dict[str, str]]:
        """The named groups of each of django_sse's log lines that ``pattern`` matches (each
        line once, see ``_django_sse_lines``)."""
        return self._django_sse_lines(pattern, since)

    def streams_opened(self, job_id: str, since: int = 0) -> list[dict[str, str]]:
        """The ``Stream opened`` lines of one job: one per 200 stream response."""
        return [m for m in self._django_sse_lines(STREAM_OPENED, since) if m["job"] == job_id]

    def session_streams_opened(self, since: int = 0) -> list[dict[str, str]]:
        """The ``Session stream opened`` lines: one per 200 response of ``/sse/events/``."""
        return self._django_sse_lines(SESSION_STREAM_OPENED, since)

    def streams_refused(self, job_id: str, since: int = 0) -> list[dict[str, str]]:
        return [m for m in self._django_sse_lines(STREAM_REFUSED, since) if m["job"] == job_id]

    def assert_no_errors(self, since: int = 0) -> None:
        text = self.text(since)
        assert not SERVER_ERRORS.search(text), f"{self.path.name} has errors:\n{text[-6000:]}"


# -- the processes ----------------------------------------------------------------------------


@dataclass
class Daphne:
    """One Daphne process of the example on a fixed port; can be killed and started again."""

    port: int
    env: dict[str, str]
    log: LogFile
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        with open(self.log.path, "ab") as out:
            self.process = start_daphne(
                self.port,
                self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                application=ASGI_APPLICATION,
            )
        self.starts += 1
        wait_listening(self.process, self.port, lambda: self.log.text()[-4000:], timeout, 0.05)

    def kill(self) -> None:
        """A crash: SIGKILL, no goodbye to the open streams."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@dataclass
class ExampleSite:
    """The example project: its database, a ``db_worker`` and Daphne servers."""

    step_seconds: float
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="django_sse_browser_")))
    env: dict[str, str] = field(default_factory=dict)
    db_name: str = ""
    worker: subprocess.Popen[bytes] | None = None
    worker_log: LogFile | None = None
    servers: list[Daphne] = field(default_factory=list)

    def setup(self) -> None:
        inherited = dict(os.environ)
        inherited.pop("SSE_CORS_ALLOWED_ORIGINS", None)
        env = child_env(
            inherited,
            DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
            REPORT_STEP_SECONDS=str(self.step_seconds),
        )
        if USE_POSTGRES:
            self.db_name = f"django_sse_browser_{run_id()}"
            create_database(DATABASE_URL, self.db_name)
            env["DATABASE_URL"] = _pg_url(self.db_name)
        else:
            env.pop("DATABASE_URL", None)
            self.db_name = str(self.tmp / "example.sqlite3")
            env["SQLITE_PATH"] = self.db_name
        self.env = env
        self.manage("migrate", "--noinput", "--verbosity", "0")
        self.manage("create_demo_users")

    def manage(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [sys.executable, MANAGE, *args],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"manage.py {args} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start_worker(self) -> None:
        self.worker_log = LogFile(self.tmp / "worker.log")
        with open(self.worker_log.path, "ab") as out:
            self.worker = subprocess.Popen(
                [
                    sys.executable,
                    MANAGE,
                    "db_worker",
                    "--no-reload",
                    "--no-startup-delay",
                    "--interval",
                    "0.2",
                ],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        time.sleep(0.2)
        assert self.worker.poll() is None, f"db_worker exited:\n{self.worker_log.text()}"

    def job_last_seq(self, job_id: str) -> int:
        """The ``seq`` of the job's last event, read from the site's database (what the worker
        has published, whatever the pages got)."""
        query = "SELECT last_seq FROM django_sse_job WHERE id = %s"
        if USE_POSTGRES:
            with pg_connect(DATABASE_URL, self.db_name) as connection:
                row = connection.execute(query, (job_id,)).fetchone()
        else:
            import sqlite3

            # Django stores a UUID in SQLite as 32 hex digits.
            with contextlib.closing(sqlite3.connect(self.db_name, timeout=10)) as connection:
                row = connection.execute(
                    query.replace("%s", "?"), (job_id.replace("-", ""),)
                ).fetchone()
        assert row is not None, f"no job {job_id}"
        return int(row[0])

    def start_server(self, name: str, cors_origins: list[str] | None = None) -> Daphne:
        env = dict(self.env)
        if cors_origins:
            env["SSE_CORS_ALLOWED_ORIGINS"] = ",".join(cors_origins)
        server = Daphne(free_port(), env, LogFile(self.tmp / f"{name}.log"))
        self.servers.append(server)
        server.start()
        return server

    def close(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        if self.worker is not None:
            # A first SIGTERM lets the worker finish its report; a second one stops it now.
            with contextlib.suppress(Exception):
                stop_process(self.worker, timeout=5, signals=2)
        if USE_POSTGRES and self.db_name:
            drop_database(DATABASE_URL, self.db_name)
        if os.environ.get("BROWSER_KEEP_LOGS"):
            print(f"browser test logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# What ``manage.py runserver`` serves when ``daphne`` is not in INSTALLED_APPS: Django's
# threaded WSGI server, static files included. It collects a streaming response before it sends
# a byte, so a stream never answers.
WSGI_SERVER_PY = """
import sys
import django
django.setup()
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.servers.basehttp import run
from django.core.wsgi import get_wsgi_application
run("127.0.0.1", int(sys.argv[1]), StaticFilesHandler(get_wsgi_application()), threading=True)
"""


@dataclass
class WsgiServer:
    """The example served by Django's WSGI server (as runserver without daphne would)."""

    port: int
    log: LogFile
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


@contextlib.contextmanager
def wsgi_server(site: ExampleSite, timeout: float = 20) -> Iterator[WsgiServer]:
    port = free_port()
    log = LogFile(site.tmp / "wsgi.log")
    with open(log.path, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", WSGI_SERVER_PY, str(port)],
            cwd=ROOT,
            env=site.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = WsgiServer(port, log, process)
    try:
        wait_listening(process, port, lambda: log.text()[-4000:], timeout, 0.05, name="WSGI")
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def example_site(step_seconds: float) -> Iterator[ExampleSite]:
    site = ExampleSite(step_seconds)
    try:
        site.setup()
        site.start_worker()
        yield site
    finally:
        site.close()


# -- a page of another origin -----------------------------------------------------------------


@contextlib.contextmanager
def static_page_server(html: str) -> Iterator[str]:
    """Serve ``html`` at every path of http://127.0.0.1:<free port>/; yields the origin."""
    body = html.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# -- scripts for the page ---------------------------------------------------------------------

# Added to every page before its own scripts: records what each EventSource of the page sees
# (window.__sse) and every text the job page's status line shows (window.__statusTexts). The
# wrapper only listens; the page's own listeners get the very same events.
RECORDER_JS = r"""
(() => {
  const Native = window.EventSource;
  if (!Native || Native.__recording) { return; }
  const log = (window.__sse = []);
  let count = 0;
  class RecordingEventSource extends Native {
    constructor(url, init) {
      super(url, init);
      const n = count++;
      this.__n = n;
      log.push({ kind: "new", n, url: String(url), t: Date.now() });
      super.addEventListener("open", () => log.push({ kind: "open", n, t: Date.now() }));
      super.addEventListener("error", () =>
        log.push({ kind: "error", n, readyState: this.readyState, t: Date.now() }));
    }
    addEventListener(type, listener, options) {
      if (type === "open" || type === "error" || typeof listener !== "function") {
        return super.addEventListener(type, listener, options);
      }
      const n = this.__n;
      const wrapped = function (event) {
        const { lastEventId: id, data } = event;
        log.push({ kind: "event", n, type, id, data, t: Date.now() });
        return listener.call(this, event);
      };
      return super.addEventListener(type, wrapped, options);
    }
  }
  RecordingEventSource.__recording = true;
  window.EventSource = RecordingEventSource;

  window.__statusTexts = [];
  document.addEventListener("DOMContentLoaded", () => {
    const status = document.getElementById("job-status");
    if (!status) { return; }
    new MutationObserver((records) => {
      for (const record of records) {
        for (const node of record.addedNodes) { window.__statusTexts.push(node.textContent); }
      }
    }).observe(status, { childList: true, subtree: true });
  });
})();
"""

# Opens a plain EventSource and resolves once it is closed for good (or was told to close),
# or after timeoutMs: {events: [{type, id, data}], errors: [readyState...], readyState}.
# With closeOn, the page closes the source after an event of that type, as the README asks.
WATCH_PLAIN_JS = r"""
async ({ url, withCredentials, types, timeoutMs, closeOn }) => {
  const source = new EventSource(url, { withCredentials: Boolean(withCredentials) });
  const events = [];
  const errors = [];
  return await new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      const readyState = source.readyState;
      source.close();
      resolve({ events, errors, readyState });
    };
    const timer = setTimeout(finish, timeoutMs);
    for (const type of types) {
      source.addEventListener(type, (event) => {
        events.push({ type, id: event.lastEventId, data: event.data });
        if (closeOn && type === closeOn) { finish(); }
      });
    }
    source.addEventListener("error", () => {
      errors.push(source.readyState);
      if (source.readyState === EventSource.CLOSED) { finish(); }
    });
  });
}
"""

# fetch() with the visitor's cookies; resolves to {ok, status, text} or {rejected: message}.
FETCH_JS = r"""
async ({ url, credentials, timeoutMs }) => {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const response = await fetch(url, { credentials, signal: controller.signal });
    const text = await response.text();
    return { ok: response.ok, status: response.status, text,
             contentType: response.headers.get("content-type") };
  } catch (error) {
    return { rejected: String(error) };
  } finally {
    clearTimeout(timer);
  }
}
"""


# -- the example on other servers (tests/test_servers.py, tests/test_http2.py) ---------------


@dataclass
class ExampleServer(Daphne):
    """The example served by another server of ``tests.live.processes.SERVER_KINDS`` (uvicorn,
    Granian), with ``extra`` options (TLS for HTTP/2); restartable as ``Daphne``."""

    kind: str = "uvicorn"
    extra: tuple[str, ...] = ()
    scheme: str = "http"
    application: str = ASGI_APPLICATION

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        with open(self.log.path, "ab") as out:
            self.process = start_server(
                self.kind,
                self.port,
                self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                application=self.application,
                extra=self.extra,
            )
        self.starts += 1
        wait_listening(
            self.process, self.port, lambda: self.log.text()[-4000:], timeout, 0.05, self.kind
        )


def start_example_server(
    site: ExampleSite,
    kind: str,
    name: str,
    extra: tuple[str, ...] = (),
    scheme: str = "http",
    application: str = ASGI_APPLICATION,
) -> ExampleServer:
    """The example (or ``application``) on a ``kind`` server, stopped with the site."""
    server = ExampleServer(
        free_port(), dict(site.env), LogFile(site.tmp / f"{name}.log"), kind=kind, extra=extra,
        scheme=scheme, application=application,
    )  # fmt: skip
    site.servers.append(server)
    server.start()
    return server


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, and the key (PKCS#8, as Granian
    wants it), written to ``directory``; valid for a day."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def launched_chromium(*extra_args: str) -> Iterator[Any]:
    """Debian's Chromium, headless, under Playwright; a launch that fails fails the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args]
            )
        except Exception as exc:
            pytest.fail(f"Chromium ({CHROMIUM}) did not start under Playwright: {exc}")
        try:
            yield browser
        finally:
            browser.close()

"""``django_sse.servers`` against the real servers: what it reads from each one's ``send``.

These readers lean on other projects' internals (a Daphne ``send`` is a ``functools.partial``
of its server's ``handle_reply``; uvicorn's is the bound ``send`` of a request cycle that holds
the transport), so a new version of either could break them: these tests say so at once. Each
server is started as ``tests.live.processes.server_command`` starts it for every live test: uvicorn
on uvloop and httptools (``uvicorn[standard]``), whose transport is not an asyncio class;
Granian, whose connection the app cannot see (a server it does not know).

Then, on each server: a shutdown with open streams ends them within the server's own bound
(``servers``), and, on uvicorn and Granian, the example's job page runs to the end in Chromium
(``browser``, ``servers``; the browser suite itself runs on Daphne).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from django_sse.servers import connection_of
from tests.live.abuse_support import RawStream, Shared, raw_streams, serve, shared_database
from tests.live.browser_support import (
    ExampleSite,
    check_browser,
    check_services,
    example_site,
    launched_chromium,
    start_example_server,
)
from tests.live.processes import (
    ROOT,
    SERVER_KINDS,
    child_env,
    free_port,
    server_command,
    stop_process,
    wait_listening,
    wait_until,
)

pytestmark = pytest.mark.e2e

APPLICATION = "tests.live.servers_app:application"
# The servers whose connection django_sse reads (the others get a byte budget per connection).
KNOWN = {"daphne", "uvicorn"}


@pytest.fixture(params=SERVER_KINDS, scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    name = str(request.param)
    port = free_port()
    log = Path(tmp_path_factory.mktemp("servers")) / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            server_command(name, port, APPLICATION),
            cwd=ROOT,
            env=child_env(),
            stdout=out,
            stderr=out,
        )
    try:
        wait_listening(process, port, log.read_text, name=name)
        yield name, port
    finally:
        stop_process(process)


def test_the_connection_of_each_known_server_is_found_and_bounded(
    server: tuple[str, int],
) -> None:
    name, port = server
    report = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).json()
    if name not in KNOWN:
        # Granian: no connection, so each stream gets a byte budget (streaming.py).
        assert report == {"server": None, "backpressure": None, "user_timeout_ms": None}
        return
    assert report["server"] == name
    assert report["backpressure"] is True
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert report["user_timeout_ms"] == 2500


def test_an_aborted_connection_is_dropped(server: tuple[str, int]) -> None:
    name, port = server
    if name not in KNOWN:
        # Nothing to drop it with: the request is answered (the stream's byte budget and
        # send timeout are what end a stream there).
        assert httpx.get(f"http://127.0.0.1:{port}/abort", timeout=10).json()["server"] is None
        return
    # A reset (or a connection closed with no answer): either way no response.
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(f"http://127.0.0.1:{port}/abort", timeout=10)


def test_a_server_nobody_recognises_has_no_connection() -> None:
    async def send(message: object) -> None:
        pass

    class Other:
        async def send(self, message: object) -> None:
            pass

    assert connection_of(send) is None
    assert connection_of(Other().send) is None
    assert connection_of(asyncio.sleep) is None


# -- shutdown with open streams ----------------------------------------------------------------

# Each server's bound on a shutdown with open streams, as docs/deployment.rst gives it: Daphne
# ends them at once (each stream ends as if its client had left); uvicorn waits for them up to
# --timeout-graceful-shutdown, Granian up to --workers-kill-timeout, and without those options
# both wait as long as a stream lasts (endless, for a running job: measured, still open after
# 90 s; uvicorn #2829).
SHUTDOWN_SECONDS = 3
SHUTDOWN_OPTIONS = {
    "daphne": (),
    "uvicorn": ("--timeout-graceful-shutdown", str(SHUTDOWN_SECONDS)),
    "granian": ("--workers-kill-timeout", str(SHUTDOWN_SECONDS)),
}


def has_events(stream: RawStream, count: int) -> bool:
    return len(stream.events) >= count


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    with shared_database() as value:
        yield value


@pytest.mark.servers
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_shutdown_with_open_streams_ends_them_within_the_servers_bound(
    shared: Shared, kind: str
) -> None:
    owner = f"owner-{secrets.token_hex(4)}"
    spec = {"users": [owner], "jobs": [{"owner": owner, "events": 3, "size": 100}] * 3}
    options = SHUTDOWN_OPTIONS[kind]
    with (
        serve(shared, kind, spec, {"HEARTBEAT_SECONDS": 60.0}, options) as (server, made),
        raw_streams() as streams,
    ):
        for job_id in made.jobs:
            stream = RawStream.open(
                server.port, f"/sse/jobs/{job_id}/events/", session=made.sessions[owner]
            )
            streams.append(stream)
        for stream in streams:
            assert stream.read_until(partial(has_events, stream, 3), 10), stream.status
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        bound = SHUTDOWN_SECONDS + 2.0
        ended = [s.read_to_end(timeout=bound - (time.monotonic() - stopped)) for s in streams]
        took = time.monotonic() - stopped
        exited = wait_until(lambda: server.process.poll() is not None, 5)
        print(f"{kind} {' '.join(options)}: streams ended {ended} after {took:.2f} s")
        assert all(ended), f"{kind}: open streams after {took:.1f} s:\n{server.log()[-3000:]}"
        assert took <= bound
        assert exited, f"{kind} still runs after its streams ended"


# -- the example in a browser, on the other servers --------------------------------------------

STEPS = 20  # example_project.reports.views.DEFAULT_STEPS
STEP_SECONDS = 0.1
LOG_LINE = re.compile(r"^Step (\d+)/20: ")


@pytest.fixture(scope="module")
def site() -> Iterator[ExampleSite]:
    check_browser()
    check_services()
    with example_site(STEP_SECONDS) as site:
        yield site


@pytest.fixture(scope="module")
def browser(site: ExampleSite) -> Iterator[Any]:
    with launched_chromium() as browser:
        yield browser


@pytest.mark.browser
@pytest.mark.servers
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", [k for k in SERVER_KINDS if k != "daphne"])
def test_a_report_runs_to_the_end_in_a_browser(site: ExampleSite, browser: Any, kind: str) -> None:
    """The example's job page on uvicorn and on Granian (HTTP/1.1): every step once, in
    order, then Done (test_browser.py runs the whole browser suite on Daphne)."""
    server = start_example_server(site, kind, kind)
    since = server.log.offset()
    context = browser.new_context(base_url=server.base_url)
    try:
        context.set_default_timeout(15_000)
        page = context.new_page()
        page.goto("/accounts/login/")
        page.fill("input[name=username]", "demo")
        page.fill("input[name=password]", "demo")
        page.click("button[type=submit]")
        page.wait_for_selector("form[action='/reports/'] button")
        page.get_by_role("button", name="Run report").click()
        page.wait_for_url(re.compile(r"/reports/[0-9a-f-]{36}/$"))
        job_id = page.url.rstrip("/").rsplit("/", 1)[-1]
        page.wait_for_function(
            "() => document.getElementById('job').dataset.status === 'succeeded'", timeout=60_000
        )
        lines = page.locator("#job-log li").all_text_contents()
        steps = [int(m.group(1)) for m in map(LOG_LINE.match, lines) if m is not None]
        assert steps == list(range(1, STEPS + 1)), lines
        assert page.locator("#job-status").text_content() == "Done."
    finally:
        context.close()
        server.stop()
    text = server.log.text(since)
    # One stream for the page (a line may be printed twice: see browser_support.LogFile).
    opened = set(re.findall(rf"^(\S+ \S+) .*Stream opened: job={job_id} ", text, re.M))
    assert len(opened) == 1, text[-3000:]
    text = UNKNOWN_SERVER.sub("", text)
    assert not BROWSER_SERVER_ERRORS.search(text), text[-3000:]


# The warning of a server django_sse does not know (Granian), expected there; any other
# warning of django_sse, error or traceback is not.
UNKNOWN_SERVER = re.compile(r".*cannot read back-pressure from.*\n?")
BROWSER_SERVER_ERRORS = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|WARNING django_sse")

"""HTTP/2: the example's ten-job page in three tabs over one connection, served by Granian.

Over HTTP/1.1 a browser opens at most six connections per host, one per open stream; HTTP/2
carries every stream of the host over one. Granian serves the example with TLS (a certificate
made by the test for 127.0.0.1; Chromium runs with ``--ignore-certificate-errors``) and
negotiates HTTP/2 by ALPN (``--http auto``, its default). Each tab holds a stream of its own
(the page's cross-tab sharing is switched off by hiding ``BroadcastChannel``, so the client opens
one connection per tab as it does in browsers without it): the three streams must travel over
one HTTP/2 connection (Chromium's own record: protocol ``h2`` and one connection id), and every
tab must see every event of its ten jobs once, in order, to the end. A fourth tab, closed while
its stream is open, must end that stream on the server (Granian #917: an HTTP/2 stream reset by
the browser was not reported to the application).

A browser test (``browser``), run once per Python (``servers``; see noxfile.py).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live.browser_support import (
    ExampleServer,
    ExampleSite,
    check_browser,
    check_services,
    example_site,
    launched_chromium,
    self_signed_certificate,
    start_example_server,
)
from tests.live.processes import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.servers, pytest.mark.timeout(150)]

STEP_SECONDS = 0.25
BATCH_SIZE = 10  # example_project.reports.views.BATCH_SIZE
TABS = 3
BARS = "[data-django-sse-job]"
SESSION_STREAM = "/sse/events/"
# The example, with the Cookie headers Chromium splits over HTTP/2 joined again (Django 5.2
# would lose the session: see tests/live/servers_app.py and docs/deployment.rst).
H2_APPLICATION = "tests.live.servers_app:example_application"
# Each tab on its own (no BroadcastChannel: one connection per tab), and a record of the
# events the client applied to the page's bars, in the order it did.
ISOLATED_TAB_JS = r"""
(() => {
  try { delete window.BroadcastChannel; } catch (error) {}
  window.BroadcastChannel = undefined;
  window.__applied = [];
  // What the server rendered each bar with (the client's deferred script has not heard from
  // the stream yet when the document is parsed).
  window.__rendered = {};
  document.addEventListener("DOMContentLoaded", () => {
    for (const el of document.querySelectorAll("[data-django-sse-job]")) {
      window.__rendered[el.dataset.djangoSseJob] = Number(el.dataset.djangoSseSeq || 0);
    }
  });
  document.addEventListener("django-sse:event", (event) => {
    const { job, seq, type } = event.detail;
    window.__applied.push({ job, seq, type });
  });
})();
"""
# The unknown-server warning (django_sse/servers.py): expected, once, on Granian.
SERVER_ERRORS = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|WARNING django_sse")
UNKNOWN_SERVER = re.compile(r".*cannot read back-pressure from.*\n?")
SESSION_OPENED = re.compile(r"^(\S+ \S+) .*Session stream opened: .*$", re.M)


@pytest.fixture(scope="module")
def site() -> Iterator[ExampleSite]:
    check_browser()
    check_services()
    with example_site(STEP_SECONDS) as site:
        yield site


@pytest.fixture(scope="module")
def server(site: ExampleSite) -> Iterator[ExampleServer]:
    tls = Path(tempfile.mkdtemp(prefix="django_sse_tls_"))
    try:
        cert, key = self_signed_certificate(tls)
        extra = ("--http", "auto", "--ssl-certificate", str(cert), "--ssl-keyfile", str(key))
        yield start_example_server(
            site, "granian", "granian-h2", extra, scheme="https", application=H2_APPLICATION
        )
    finally:
        shutil.rmtree(tls, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(site: ExampleSite) -> Iterator[Any]:
    with launched_chromium("--ignore-certificate-errors") as browser:
        yield browser


def record_streams(context: Any, page: Any, responses: list[dict[str, Any]]) -> None:
    """Chromium's record (protocol, connection id) of each response to an event stream."""
    cdp = context.new_cdp_session(page)

    def received(params: dict[str, Any]) -> None:
        response = params["response"]
        if SESSION_STREAM in response["url"]:
            responses.append(
                {
                    "url": response["url"],
                    "status": response["status"],
                    "protocol": response.get("protocol"),
                    "connection": response.get("connectionId"),
                }
            )

    cdp.on("Network.responseReceived", received)
    cdp.send("Network.enable")


def opened_streams(server: ExampleServer, since: int) -> set[str]:
    """The streams opened since ``since``, by the time stamp of their log line (each line
    once: a line may be printed twice, see browser_support.LogFile)."""
    return set(SESSION_OPENED.findall(server.log.text(since)))


def applied_by_job(page: Any) -> dict[str, list[tuple[int, str]]]:
    by_job: dict[str, list[tuple[int, str]]] = {}
    for entry in page.evaluate("window.__applied"):
        by_job.setdefault(entry["job"], []).append((int(entry["seq"]), entry["type"]))
    return by_job


def test_ten_jobs_in_three_tabs_over_one_http2_connection(
    server: ExampleServer, browser: Any
) -> None:
    since = server.log.offset()
    context = browser.new_context(base_url=server.base_url, ignore_https_errors=True)
    try:
        context.set_default_timeout(15_000)
        context.add_init_script(ISOLATED_TAB_JS)
        responses: list[dict[str, Any]] = []
        first = context.new_page()
        record_streams(context, first, responses)
        first.goto("/")
        first.get_by_role("button", name="Run ten reports").click()
        # The form's answer redirects to the page it was on, with the ten bars.
        first.wait_for_selector(BARS)
        tabs = [first]
        for _ in range(TABS - 1):
            tab = context.new_page()
            record_streams(context, tab, responses)
            tab.goto("/")
            tabs.append(tab)
        # A fourth tab on the same connection, closed once its stream is open: the server
        # must learn that this HTTP/2 stream was reset (Granian #917) and end it.
        extra = context.new_page()
        record_streams(context, extra, responses)
        extra.goto("/")
        assert wait_until(lambda: len(opened_streams(server, since)) == TABS + 1, 15), (
            server.log.text(since)[-3000:]
        )
        closed_offset = server.log.offset()
        extra.close()
        left = time.monotonic()
        closed = wait_until(lambda: "reason=client went away" in server.log.text(closed_offset), 10)
        took = time.monotonic() - left
        print(f"HTTP/2: a closed tab's stream ended {took:.2f} s later on the server")
        assert closed, server.log.text(closed_offset)[-3000:]
        assert took < 3.0
        rendered: list[dict[str, int]] = [tab.evaluate("window.__rendered") for tab in tabs]
        for tab in tabs:
            assert tab.locator(BARS).count() == BATCH_SIZE
            tab.wait_for_function(
                """([sel, count]) => [...document.querySelectorAll(sel)]
                    .filter(el => el.dataset.djangoSseStatus === "succeeded").length >= count""",
                arg=[BARS, BATCH_SIZE],
                timeout=90_000,
            )

        # Three streams, each over HTTP/2, all three on one connection.
        streams = [r for r in responses if r["status"] == 200]
        print(f"HTTP/2 page: {len(streams)} streams: {streams}")
        assert len(streams) == TABS + 1, responses
        assert {r["protocol"] for r in streams} == {"h2"}, streams
        assert len({r["connection"] for r in streams}) == 1, streams

        # Every tab: each job's events once, in order, from after what the page was rendered
        # with, to its end.
        for index, tab in enumerate(tabs):
            received = applied_by_job(tab)
            assert set(received) == set(rendered[index]), (index, received.keys())
            for job, events in received.items():
                seqs = [seq for seq, _ in events]
                start = rendered[index][job] + 1
                assert seqs == list(range(start, start + len(seqs))), (index, job, seqs)
                assert events[-1][1] == "succeeded", (index, job, events)
    finally:
        context.close()
    opened = opened_streams(server, since)
    assert len(opened) == TABS + 1, opened
    text = UNKNOWN_SERVER.sub("", server.log.text(since))
    assert not SERVER_ERRORS.search(text), text[-6000:]

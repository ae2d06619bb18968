"""htmx 4 (``hx-sse``) and htmx 2 (``htmx-ext-sse``) on a job's ``?format=html`` stream.

The browser tests run the example's htmx page (``/reports/<uuid>/htmx/``: htmx 4, or htmx 2 with
``?htmx=2``) in headless Chromium against Daphne, the way ``tests/test_browser.py`` does (see
``tests/live/browser_support.py``). The htmx files are the npm registry's, vendored by exact version
in ``tests/vendor/htmx/`` (its README says how); the example serves copies, checked here to be
byte for byte the vendored files.

What they check, for each version: the report live to its end, every log line once, and no
stream request after the end (the server's log); a server killed mid-report and started again,
the page resuming where it was (``Last-Event-ID``) without a repeated or missing line; and for
htmx 4, whose ``hx-sse`` drops the stream while the tab is hidden, a hidden-then-visible tab
resuming the same way.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from django_sse import publish
from django_sse.fragments import SWAP_ATTRIBUTE
from django_sse.models import Job
from tests.live.browser_support import (
    RECORDER_JS,
    Daphne,
    ExampleSite,
    check_browser,
    check_services,
    example_site,
    launched_chromium,
)
from tests.live.processes import ROOT, wait_until
from tests.utils import StreamClient

VENDOR = Path(__file__).resolve().parent / "vendor" / "htmx"
EXAMPLE_VENDOR = ROOT / "example_project" / "reports" / "static" / "reports" / "vendor"
HTMX4 = "htmx.org-4.0.1"
HTMX2 = "htmx.org-2.0.11"
SSE2 = "htmx-ext-sse-2.2.4"
# sha256sum of the files as npm pack gave them (tests/vendor/htmx/README.rst).
VENDORED_SHA256 = {
    f"{HTMX4}/dist/htmx.min.js": "a0abb04f2f45a1f89d1d4844023245537e5e6014c87b144553e0607b4cc32130",
    f"{HTMX4}/dist/ext/hx-sse.min.js": (
        "18ef2761356ec1fe0bb6d92612315b37517a7c1e9856b661c5ae81fef239d103"
    ),
    f"{HTMX2}/dist/htmx.min.js": "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717",
    f"{SSE2}/dist/sse.min.js": "98a46496de0c3605fbffdce9167ba427bdd9553184f83f149c261891a92c0136",
}
# The example's copies (example_project/reports/static/reports/vendor/).
EXAMPLE_COPIES = {
    "htmx-4.0.1.min.js": f"{HTMX4}/dist/htmx.min.js",
    "hx-sse-4.0.1.min.js": f"{HTMX4}/dist/ext/hx-sse.min.js",
    "htmx-2.0.11.min.js": f"{HTMX2}/dist/htmx.min.js",
    "htmx-ext-sse-2.2.4.min.js": f"{SSE2}/dist/sse.min.js",
}

STEPS = 20
# Seconds between two report steps: a report takes about STEPS * STEP_SECONDS.
STEP_SECONDS = 0.25
JOB_TIMEOUT_MS = 40_000
LOG_LINE = re.compile(r"^Step (?P<step>\d+)/(?P<steps>\d+): read \d+ \w+$")
JOB_PATH = re.compile(r"/reports/(?P<job>[0-9a-f-]{36})/$")
# hx-sse 4.0.1 reconnects 500 ms after a stream ends (its reconnectDelay; our "retry:" comes
# alone, before any event, and hx-sse applies a retry only with an event), give or take 30%.
# htmx 2's EventSource comes back after our retry (3 s, the example's) and htmx-ext-sse opens a
# new one 500 ms after an EventSource that gave up. A page that reconnects would have done so
# well within this.
RECONNECT_WINDOW_SECONDS = 4.0

# The ``format=html`` stream lines of django_sse's log (fragments.py adds the form).
HTML_OPENED = re.compile(
    r"Stream opened: job=(?P<job>[0-9a-f-]{36}) user=\S+ resume=(?P<resume>\d+) "
    r"html=(?P<form>\w+)"
)
HTML_CLOSED = re.compile(
    r"Stream closed: job=(?P<job>[0-9a-f-]{36}) user=\S+ events=\d+ html=\w+ "
    r".*reason=(?P<reason>.+)$"
)

# What hx-sse (htmx 4) and htmx-ext-sse (htmx 2) tell the page, recorded in window.__htmx:
# {name, id, event, reason, t}. Their own events, not a copy of their logic.
HTMX_EVENTS_JS = r"""
(() => {
  const log = (window.__htmx = []);
  const names = [
    "htmx:sse:after:connection", "htmx:sse:after:message", "htmx:sse:error", "htmx:sse:close",
    "htmx:sseOpen", "htmx:sseMessage", "htmx:sseError", "htmx:sseClose",
  ];
  for (const name of names) {
    document.addEventListener(name, (event) => {
      const detail = event.detail || {};
      const message = detail.message || {};
      log.push({
        name,
        t: Date.now(),
        id: message.id ?? detail.lastEventId ?? null,
        event: message.event ?? null,
        reason: detail.reason ?? (name === "htmx:sseClose" ? detail.type : null),
      });
    }, true);
  }
})();
"""

# document.hidden as the page sees it, then the event hx-sse listens to (visibilitychange on
# document): what a browser does when its tab goes to the background and comes back.
SET_VISIBILITY_JS = r"""
hidden => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
  Object.defineProperty(document, "visibilityState", {
    configurable: true, get: () => (hidden ? "hidden" : "visible"),
  });
  document.dispatchEvent(new Event("visibilitychange"));
}
"""


# -- the vendored files -----------------------------------------------------------------------


def test_vendored_htmx_files_are_the_npm_registrys() -> None:
    for path, digest in VENDORED_SHA256.items():
        assert hashlib.sha256((VENDOR / path).read_bytes()).hexdigest() == digest, path
    for folder in (HTMX4, HTMX2, SSE2):
        assert "Zero Clause" in (VENDOR / folder / "LICENSE").read_text().replace("-", " ")
    for name, vendored in EXAMPLE_COPIES.items():
        assert (EXAMPLE_VENDOR / name).read_bytes() == (VENDOR / vendored).read_bytes(), name


# -- the two forms on the wire ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_htmx4_gets_unnamed_partials_then_a_named_end(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    await sync_to_async(job.start)()
    await sync_to_async(job.set_progress)(3, 12, "Reading <orders>")
    await sync_to_async(job.flush_progress)()
    client = StreamClient(
        f"/sse/jobs/{job.pk}/events/?format=html",
        session_key=owner_key,
        headers={"HX-Request": "true"},
    )
    await client.start()
    await sync_to_async(publish)(job, "log", {"line": "Step 1 <b>done</b>"})
    await sync_to_async(job.succeed)({"rows": 4})
    await client.read_to_end(timeout=5)
    events = client.parser.events
    # Unnamed ("message"), so that hx-sse swaps them in; ids as in the JSON stream.
    assert [(e.type, e.last_event_id) for e in events] == [
        ("message", "1"),
        ("message", "2"),
        ("message", "3"),
        ("message", "4"),
        ("end", "4"),
    ]
    status = f"findAll [{SWAP_ATTRIBUTE}~='started']"
    assert events[0].data.startswith(f'<hx-partial hx-target="{status}" hx-swap="innerHTML">')
    assert 'data-status="running"' in events[0].data
    bar = f"findAll [{SWAP_ATTRIBUTE}~='progress']"
    assert events[1].data.startswith(f'<hx-partial hx-target="{bar}" hx-swap="innerHTML">')
    assert "Reading &lt;orders&gt;" in events[1].data
    assert events[2].data == (
        f'<hx-partial hx-target="findAll [{SWAP_ATTRIBUTE}~=\'log\']" hx-swap="beforeend">'
        "<li>Step 1 &lt;b&gt;done&lt;/b&gt;</li></hx-partial>"
    )
    assert 'data-status="succeeded"' in events[3].data
    assert events[3].data.endswith("</hx-partial>")
    assert events[4].data == "succeeded"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_htmx4_replay_of_a_finished_job_ends_with_end(
    hub_cleanup: None, job: Job, owner_key: str
) -> None:
    await sync_to_async(job.start)()
    await sync_to_async(job.fail)("Disk full")
    client = StreamClient(
        f"/sse/jobs/{job.pk}/events/?format=html",
        session_key=owner_key,
        headers={"HX-Request": "true"},
    )
    await client.start()
    await client.read_to_end(timeout=5)
    events = client.parser.events
    assert [e.type for e in events] == ["message", "message", "end"]
    assert "Disk full" in events[1].data
    assert events[2].data == "failed"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site() -> Iterator[ExampleSite]:
    check_browser()
    check_services()
    with example_site(STEP_SECONDS) as site:
        yield site


@pytest.fixture(scope="module")
def server(site: ExampleSite) -> Daphne:
    return site.start_server("daphne")


@pytest.fixture(scope="module")
def browser(site: ExampleSite) -> Iterator[Any]:
    with launched_chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Any, server: Daphne) -> Iterator[Any]:
    """A page logged in as ``demo``, recording htmx's SSE events and its EventSources."""
    context = browser.new_context(base_url=server.base_url)
    try:
        context.set_default_timeout(15_000)
        context.add_init_script(RECORDER_JS)
        context.add_init_script(HTMX_EVENTS_JS)
        page = context.new_page()
        page.goto("/accounts/login/")
        page.fill("input[name=username]", "demo")
        page.fill("input[name=password]", "demo")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/$"))
        yield page
    finally:
        context.close()


# -- helpers ----------------------------------------------------------------------------------


def open_htmx_page(page: Any, server: Daphne, version: int) -> tuple[str, int]:
    """Run a report and open its htmx page: (job id, offset of the server's log before the
    page's stream). The job page the report leads to opens a stream of its own (JSON): only
    ``html=`` lines count."""
    page.goto("/")
    page.get_by_role("button", name="Run report").click()
    page.wait_for_url(JOB_PATH)
    match = JOB_PATH.search(page.url)
    assert match is not None
    since = server.log.offset()
    page.goto(f"/reports/{match['job']}/htmx/" + ("?htmx=2" if version == 2 else ""))
    return match["job"], since


def rendered_last_id(page: Any, version: int) -> int:
    """The last event the page was rendered with (its stream starts after it)."""
    attribute = "hx-sse:connect" if version == 4 else "sse-connect"
    url = page.locator("#htmx-job").get_attribute(attribute) or ""
    match = re.search(r"last_event_id=(\d+)", url)
    assert match is not None, url
    return int(match[1])


def htmx_events(page: Any, name: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = page.evaluate("window.__htmx || []")
    return [e for e in events if e["name"] == name]


def received_ids(page: Any, version: int) -> list[int]:
    """The ids of the job's events the page received, in order (``end`` has none of its own)."""
    if version == 4:
        messages = htmx_events(page, "htmx:sse:after:message")
        return [int(m["id"]) for m in messages if m["event"] != "end"]
    recorded: list[dict[str, Any]] = page.evaluate("window.__sse || []")
    return [int(e["id"]) for e in recorded if e["kind"] == "event" and e["type"] != "end"]


def wait_for_end(page: Any) -> None:
    page.wait_for_selector("#htmx-status [data-status=succeeded]", timeout=JOB_TIMEOUT_MS)


def steps_of(page: Any) -> list[int]:
    steps = []
    for line in page.locator("#htmx-log li").all_text_contents():
        match = LOG_LINE.match(line)
        assert match is not None, f"unexpected log line {line!r}"
        assert int(match["steps"]) == STEPS
        steps.append(int(match["step"]))
    return steps


def html_streams(server: Daphne, job_id: str, since: int) -> list[dict[str, str]]:
    """The ``format=html`` streams of the job the server opened (``Stream opened`` lines)."""
    return [m for m in server.log.django_sse_lines(HTML_OPENED, since) if m["job"] == job_id]


def html_streams_closed(server: Daphne, job_id: str, since: int) -> list[str]:
    """Why each ``format=html`` stream of the job ended (``Stream closed`` lines)."""
    closed = server.log.django_sse_lines(HTML_CLOSED, since)
    return [m["reason"] for m in closed if m["job"] == job_id]


def stream_responses(server: Daphne, job_id: str, since: int) -> list[int]:
    """The statuses of the job's ``format=html`` stream responses that ended (Daphne's access
    log): a ``204`` opens no stream, and only shows here."""
    entries = server.log.access(f"/sse/jobs/{job_id}/events/?format=html", since)
    return [entry.status for entry in entries]


def assert_no_reconnection(server: Daphne, job_id: str, since: int, count: int) -> None:
    """No request for the job's stream after the ``count`` the page made, for as long as a
    reconnection would take."""
    deadline = time.monotonic() + RECONNECT_WINDOW_SECONDS
    while time.monotonic() < deadline:
        opened = html_streams(server, job_id, since)
        responses = stream_responses(server, job_id, since)
        assert len(opened) == count and len(responses) <= count, (opened, responses)
        time.sleep(0.2)


def assert_every_step_once(page: Any, version: int, first_id: int) -> None:
    assert steps_of(page) == list(range(1, STEPS + 1))
    ids = received_ids(page, version)
    assert ids == list(range(first_id, first_id + len(ids))), f"event ids {ids}"


def stream_requests(page: Any) -> list[Any]:
    """Record the page's requests to a job's ``format=html`` stream (fetch or EventSource)."""
    requests: list[Any] = []
    page.on(
        "request",
        lambda r: requests.append(r) if "/sse/jobs/" in r.url and "format=html" in r.url else None,
    )
    return requests


def wait_for_messages(page: Any, version: int, count: int) -> None:
    """Until the page has received ``count`` events of its stream (live ones, after the page)."""
    page.wait_for_function(
        """([version, n]) => version === 4
            ? (window.__htmx || []).filter(e => e.name === 'htmx:sse:after:message').length >= n
            : (window.__sse || []).filter(e => e.kind === 'event').length >= n""",
        arg=[version, count],
        timeout=20_000,
    )


# -- in the browser ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 2])
@pytest.mark.browser
@pytest.mark.timeout(120)
def test_live_progress_to_the_end_then_no_reconnection(
    page: Any, server: Daphne, version: int
) -> None:
    job_id, since = open_htmx_page(page, server, version)
    first_id = rendered_last_id(page, version) + 1

    wait_for_end(page)

    assert page.locator("#htmx-status").text_content() == "Succeeded"
    bar = page.locator("#htmx-progress [role=progressbar]")
    assert bar.get_attribute("aria-valuenow") == str(STEPS)
    assert_every_step_once(page, version, first_id)
    form = "partials" if version == 4 else "events"
    assert [s["form"] for s in html_streams(server, job_id, since)] == [form]
    assert_no_reconnection(server, job_id, since, 1)
    # The stream's "end" closed it: hx-sse:close="end" / sse-close="end".
    close = "htmx:sse:close" if version == 4 else "htmx:sseClose"
    page.wait_for_function(
        "name => (window.__htmx || []).some(e => e.name === name)", arg=close, timeout=5_000
    )
    assert [c["reason"] for c in htmx_events(page, close)] == ["message"]
    if version == 2:
        sources = [e for e in page.evaluate("window.__sse") if e["kind"] == "new"]
        assert len(sources) == 1, sources
    assert html_streams_closed(server, job_id, since) == ["job finished"]
    assert stream_responses(server, job_id, since) == [200]
    server.log.assert_no_errors(since)


@pytest.mark.parametrize("version", [4, 2])
@pytest.mark.browser
@pytest.mark.timeout(120)
def test_dropped_connection_resumes_without_a_repeated_line(
    page: Any, server: Daphne, version: int
) -> None:
    requests = stream_requests(page)
    job_id, since = open_htmx_page(page, server, version)
    first_id = rendered_last_id(page, version) + 1
    wait_for_messages(page, version, 2)

    server.kill()
    # The page notices (hx-sse: a read error; htmx 2: its EventSource's), then retries by itself.
    if version == 4:
        noticed = "(window.__htmx || []).some(e => e.name === 'htmx:sse:error')"
    else:
        noticed = "(window.__sse || []).some(e => e.kind === 'error')"
    try:
        page.wait_for_function(noticed, timeout=5_000)
        last_before = max(received_ids(page, version))
    finally:
        restart_offset = server.log.offset()
        server.start()

    wait_for_end(page)

    assert_every_step_once(page, version, first_id)
    # The reconnection that reached the new server resumed right after the page's last event:
    # Last-Event-ID, sent by hx-sse itself (htmx 4) or by the browser's EventSource (htmx 2).
    opened = html_streams(server, job_id, restart_offset)
    assert [o["resume"] for o in opened] == [str(last_before)], opened
    assert requests[0].all_headers().get("last-event-id") is None
    retries = [r.all_headers().get("last-event-id") for r in requests[1:]]
    assert retries and set(retries) == {str(last_before)}, retries
    reached = [r for r in requests[1:] if not (r.failure and "CONNECTION_REFUSED" in r.failure)]
    assert len(reached) == 1, [(r.url, r.failure) for r in requests]
    if version == 2:
        # The same EventSource throughout: htmx-ext-sse did not open a new one (which would
        # start again from the page's last_event_id).
        assert len([e for e in page.evaluate("window.__sse") if e["kind"] == "new"]) == 1
    print(
        f"htmx {version}: killed after event {last_before}, {len(requests) - 1} reconnection "
        f"attempt(s), {[r.failure for r in requests if r.failure]}"
    )
    server.log.assert_no_errors(since)


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_htmx4_hidden_tab_resumes_without_a_repeated_line(
    page: Any, server: Daphne, site: ExampleSite
) -> None:
    requests = stream_requests(page)
    job_id, since = open_htmx_page(page, server, 4)
    first_id = rendered_last_id(page, 4) + 1
    wait_for_messages(page, 4, 2)

    page.evaluate(SET_VISIBILITY_JS, True)
    # hx-sse drops the stream (pauseOnBackground): the server sees its client leave.
    closed = wait_until(lambda: html_streams_closed(server, job_id, since), 10)
    assert closed == ["client went away"], closed
    # The job goes on meanwhile; the hidden page gets none of it.
    hidden_at = max(received_ids(page, 4))
    assert wait_until(lambda: site.job_last_seq(job_id) >= hidden_at + 3, 10)
    assert max(received_ids(page, 4)) == hidden_at
    assert site.job_last_seq(job_id) > hidden_at

    page.evaluate(SET_VISIBILITY_JS, False)
    wait_for_end(page)

    assert_every_step_once(page, 4, first_id)
    # Visible again: one new stream, from right after the last event the page had.
    opened = html_streams(server, job_id, since)
    assert [o["resume"] for o in opened] == [str(first_id - 1), str(hidden_at)], opened
    headers = [r.all_headers().get("last-event-id") for r in requests]
    assert headers == [None, str(hidden_at)], headers
    server.log.assert_no_errors(since)

"""Real-browser tests: headless Chromium, through its own EventSource, against the example project.

The example runs as it does for a visitor (``scripts/run-example``): Daphne serving
``example_project`` and a ``db_worker`` process running the 20-step report, on a database of
their own (see ``tests/live/browser_support.py``). The browser talks to them over HTTP only; the
tests read what the page shows and the server's log (Daphne's access log and django_sse's INFO
lines).

Chromium is Debian's (``/usr/bin/chromium``, or ``CHROMIUM_PATH``), driven by Playwright's sync
API. Without them these tests are skipped, and under ``CI=true`` they fail; likewise PostgreSQL
or Redis when ``DATABASE_URL`` or ``REDIS_URL`` names one that cannot be reached.
``BROWSER_KEEP_LOGS=1`` keeps the servers' logs (their folder is printed).

Screenshots of the report page, running and done, go to ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from tests.live.browser_support import (
    ARTIFACTS,
    FETCH_JS,
    RECORDER_JS,
    WATCH_PLAIN_JS,
    Daphne,
    ExampleSite,
    check_browser,
    check_services,
    example_site,
    launched_chromium,
    static_page_server,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

STEPS = 20
# Seconds between two report steps: a report takes about STEPS * STEP_SECONDS.
STEP_SECONDS = 0.25
# The example's DJANGO_SSE does not change the reconnection delay: django_sse's default.
RETRY_SECONDS = 3.0
# Long enough for a report, a worker's pick-up and a reconnection or two.
JOB_TIMEOUT_MS = 40_000
LOG_LINE = re.compile(r"^Step (?P<step>\d+)/(?P<steps>\d+): read (?P<rows>\d+) (?P<section>\w+)$")
JOB_PATH = re.compile(r"/reports/(?P<job>[0-9a-f-]{36})/$")
LIFECYCLE = ["started", "progress", "succeeded", "failed", "cancelled", "log"]


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
def new_context(browser: Any) -> Iterator[Any]:
    """Make browser contexts (separate cookie jars) that record their EventSources."""
    contexts: list[Any] = []

    def make(base_url: str) -> Any:
        context = browser.new_context(base_url=base_url, viewport={"width": 1000, "height": 900})
        context.set_default_timeout(15_000)
        context.add_init_script(RECORDER_JS)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


# -- helpers ----------------------------------------------------------------------------------


def log_in(context: Any, username: str) -> Any:
    page = context.new_page()
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", username)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/$"))
    assert page.locator(".site-header strong").text_content() == username
    return page


def run_report(page: Any) -> str:
    """Press "Run report" on the home page; returns the job id of the page it leads to."""
    page.goto("/")
    page.get_by_role("button", name="Run report").click()
    page.wait_for_url(JOB_PATH)
    match = JOB_PATH.search(page.url)
    assert match is not None
    return match["job"]


def rendered_last_id(page: Any) -> int:
    """The last event the job page was rendered with (its stream starts after it): 0, or more
    when the worker was quicker than the page."""
    return int(page.locator("#job").get_attribute("data-last-event-id") or "0")


def stream_path(job_id: str) -> str:
    return f"/sse/jobs/{job_id}/events/"


def log_lines(page: Any) -> list[str]:
    lines: list[str] = page.locator("#job-log li").all_text_contents()
    return lines


def steps_of(lines: list[str]) -> list[int]:
    steps = []
    for line in lines:
        match = LOG_LINE.match(line)
        assert match is not None, f"unexpected log line {line!r} in {lines}"
        assert int(match["steps"]) == STEPS
        steps.append(int(match["step"]))
    return steps


def wait_for_steps(page: Any, count: int) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('#job-log li').length >= n", arg=count, timeout=20_000
    )


def wait_for_status(page: Any, status: str, timeout_ms: int = JOB_TIMEOUT_MS) -> None:
    page.wait_for_function(
        "s => document.getElementById('job').dataset.status === s", arg=status, timeout=timeout_ms
    )


def recorded(page: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = page.evaluate("window.__sse || []")
    return entries


def server_events(page: Any) -> list[dict[str, Any]]:
    return [e for e in recorded(page) if e["kind"] == "event"]


def assert_ids_follow(events: list[dict[str, Any]], first: int) -> None:
    """Each event id once, in order, without a gap, from ``first`` on."""
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(first, first + len(ids))), f"event ids {ids}"


def stream_requests(server: Daphne, job_id: str, since: int = 0) -> dict[str, Any]:
    """Requests to a job's stream seen by the server: the 200 streams (one ``Stream opened``
    line each) and the completed responses of Daphne's access log (by status)."""
    access = server.log.access(stream_path(job_id), since)
    statuses: dict[int, int] = {}
    for entry in access:
        statuses[entry.status] = statuses.get(entry.status, 0) + 1
    return {
        "opened": len(server.log.streams_opened(job_id, since)),
        "completed": statuses,
    }


def cookie_header(context: Any) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in context.cookies())


# -- the tests --------------------------------------------------------------------------------


def test_report_runs_to_the_end_with_every_step_once(server: Daphne, new_context: Any) -> None:
    since = server.log.offset()
    page = log_in(new_context(server.base_url), "demo")
    job_id = run_report(page)
    first_id = rendered_last_id(page) + 1
    assert page.locator("#job-result").is_hidden()

    wait_for_status(page, "succeeded")

    assert page.locator("#job-badge").text_content() == "Succeeded"
    assert page.locator("#job-status").text_content() == "Done."
    assert page.evaluate("document.getElementById('job-progress').value") == STEPS
    assert page.evaluate("document.getElementById('job-progress').max") == STEPS
    # The bar went through 100% before "Done." (the last progress event is not coalesced away).
    statuses = page.evaluate("window.__statusTexts")
    assert any(f"({STEPS} of {STEPS}, 100%)" in text for text in statuses), statuses
    percents = [int(m) for t in statuses for m in re.findall(r"(\d+)%\)", t)]
    assert percents == sorted(percents), statuses

    lines = log_lines(page)
    assert steps_of(lines) == list(range(1, STEPS + 1))
    # The result shown is the report's: its row count is the sum of the rows of the log.
    rows = sum(int(m["rows"]) for m in map(LOG_LINE.match, lines) if m is not None)
    assert page.locator("#job-result").is_visible()
    summary = page.locator("#job-result-summary").text_content() or ""
    assert summary.startswith(f"{rows} rows read in "), summary
    result = json.loads(page.locator("#job-result-json").text_content() or "null")
    assert result["rows"] == rows
    assert result["steps"] == STEPS

    # One EventSource, every event once and in order, from the first the page did not have.
    sources = [e for e in recorded(page) if e["kind"] == "new"]
    assert len(sources) == 1
    events = server_events(page)
    assert_ids_follow(events, first_id)
    # (The page rendered the events before first_id, log lines included, server-side.)
    assert STEPS - (first_id - 1) <= [e["type"] for e in events].count("log") <= STEPS
    assert events[-1]["type"] == "succeeded"
    opened = server.log.streams_opened(job_id, since)
    assert len(opened) == 1, opened
    server.log.assert_no_errors(since)


def test_reload_mid_run_shows_every_step_once(server: Daphne, new_context: Any) -> None:
    since = server.log.offset()
    page = log_in(new_context(server.base_url), "demo")
    job_id = run_report(page)
    first_resume = rendered_last_id(page)
    wait_for_steps(page, 3)

    page.reload()
    # The server rendered the log so far; the stream resumes right after it.
    resume = rendered_last_id(page)
    rendered = log_lines(page)
    assert resume > 0
    assert len(rendered) >= 3
    assert page.locator("#job").get_attribute("data-status") == "running"

    wait_for_status(page, "succeeded")

    assert steps_of(log_lines(page)) == list(range(1, STEPS + 1))
    assert log_lines(page)[: len(rendered)] == rendered
    # After the reload: one EventSource, whose first event is the one after the rendered page.
    events = server_events(page)
    assert events, "no event after the reload"
    assert_ids_follow(events, resume + 1)
    opened = server.log.streams_opened(job_id, since)
    assert [o["resume"] for o in opened] == [str(first_resume), str(resume)], opened
    server.log.assert_no_errors(since)


def test_page_reconnects_after_a_server_restart(server: Daphne, new_context: Any) -> None:
    context = new_context(server.base_url)
    page = log_in(context, "demo")
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if "/sse/jobs/" in r.url else None)
    since = server.log.offset()
    job_id = run_report(page)
    first_id = rendered_last_id(page) + 1
    wait_for_steps(page, 2)

    server.kill()
    killed_at = time.monotonic()
    # The page notices at once and says so; the browser retries by itself.
    page.wait_for_function(
        "document.getElementById('job-connection').dataset.state === 'reconnecting'",
        timeout=5_000,
    )
    last_id_before = max(int(e["id"]) for e in server_events(page))
    time.sleep(1.5)
    restart_offset = server.log.offset()
    server.start()

    page.wait_for_function(
        "document.getElementById('job-connection').dataset.state === 'open'"
        " || document.getElementById('job').dataset.status !== 'running'",
        timeout=int(3 * RETRY_SECONDS * 1000) + 5_000,
    )
    reconnected_after = time.monotonic() - killed_at
    wait_for_status(page, "succeeded")

    assert steps_of(log_lines(page)) == list(range(1, STEPS + 1))
    # The same EventSource, no new one: it reconnected by itself, and lost or repeated nothing.
    entries = recorded(page)
    assert len([e for e in entries if e["kind"] == "new"]) == 1
    assert len([e for e in entries if e["kind"] == "open"]) == 2
    assert_ids_follow(server_events(page), first_id)
    # The reconnection carried Last-Event-ID: the new server resumed right after the last event
    # the page had.
    opened = server.log.streams_opened(job_id, restart_offset)
    assert len(opened) == 1, server.log.text(restart_offset)
    assert opened[0]["resume"] == str(last_id_before)
    events = server_events(page)
    last_seq = int(events[-1]["id"])
    assert int(opened[0]["resume"]) < last_seq
    # Informative (timing-dependent): events that arrived live on the new server, well after
    # the reconnection's replay.
    reopened_at = [e["t"] for e in entries if e["kind"] == "open"][1]
    live = [e["id"] for e in events if e["t"] > reopened_at + 1000 * STEP_SECONDS]
    # The browser's own record of its requests: the reconnection that reached the new server
    # sent the header. A retry that found the port still closed (a slow restart) never reached
    # it; the one that did may end as ERR_ABORTED, when the page closes the EventSource on
    # "succeeded" before the response is complete.
    assert requests[0].all_headers().get("last-event-id") is None
    reconnects = [
        r for r in requests[1:] if not (r.failure and "ERR_CONNECTION_REFUSED" in r.failure)
    ]
    assert [r.all_headers().get("last-event-id") for r in reconnects] == [str(last_id_before)]
    print(
        f"restart: killed after event {last_id_before}, reconnected "
        f"{reconnected_after:.1f} s later with resume={opened[0]['resume']}, "
        f"last event {last_seq} ({len(live)} events live after the reconnection); "
        f"stream requests seen by the browser: {len(requests)} "
        f"(failed: {[r.failure for r in requests if r.failure]})"
    )
    server.log.assert_no_errors(since)


def test_no_reconnection_after_the_job_ended(server: Daphne, new_context: Any) -> None:
    context = new_context(server.base_url)
    page = log_in(context, "demo")
    responses: list[tuple[str, int]] = []

    def on_response(response: Any) -> None:
        if "/sse/jobs/" in response.url:
            responses.append((response.url, response.status))

    context.on("response", on_response)
    since = server.log.offset()
    job_id = run_report(page)
    wait_for_status(page, "succeeded")
    assert page.locator("#job-connection").text_content() == "Finished"

    # A plain EventSource on the finished job, that does not close itself after the terminal
    # event: the server replays, ends the stream, and answers the reconnection with 204.
    plain = context.new_page()
    plain.goto("/")
    plain_result = plain.evaluate(
        WATCH_PLAIN_JS,
        {
            "url": stream_path(job_id),
            "withCredentials": False,
            "types": LIFECYCLE,
            "timeoutMs": int(2 * RETRY_SECONDS * 1000) + 3_000,
            "closeOn": None,
        },
    )
    # Both pages then stay quiet for 3 retry delays.
    time.sleep(3 * RETRY_SECONDS + 0.5)

    counts = stream_requests(server, job_id, since)
    print(f"stream requests of job {job_id}: {counts}; seen by the browser: {responses}")
    # The job page: one stream, closed after the terminal event, never requested again.
    page_requests = [r for r in responses if "last_event_id=" in r[0]]
    assert [status for _, status in page_requests] == [200], responses
    # The plain EventSource: the replay (200), then one reconnection answered 204, then nothing.
    plain_requests = [r for r in responses if "last_event_id=" not in r[0]]
    assert [status for _, status in plain_requests] == [200, 204], responses
    assert plain_result["readyState"] == 2  # CLOSED
    assert [e["type"] for e in plain_result["events"]][-1] == "succeeded"
    # The server saw the same: two streams, both ended after the terminal event, and one 204.
    assert counts == {"opened": 2, "completed": {200: 2, 204: 1}}, counts
    server.log.assert_no_errors(since)


def test_another_user_gets_nothing_of_the_job(server: Daphne, new_context: Any) -> None:
    since = server.log.offset()
    demo_page = log_in(new_context(server.base_url), "demo")
    job_id = run_report(demo_page)
    wait_for_steps(demo_page, 2)

    other_context = new_context(server.base_url)
    other = log_in(other_context, "other")
    response = other.goto(f"/reports/{job_id}/")
    assert response is not None
    assert response.status == 404
    assert "Step 1/" not in other.content()

    other.goto("/")
    assert job_id not in other.content()
    watch_args = {
        "url": stream_path(job_id),
        "withCredentials": False,
        "types": [*LIFECYCLE, "message"],
        "timeoutMs": 5_000,
        "closeOn": None,
    }
    # While demo's report runs, other's EventSource fails for good (404) and gets no event.
    result = other.evaluate(WATCH_PLAIN_JS, watch_args)
    assert result == {"events": [], "errors": [2], "readyState": 2}
    fetched = other.evaluate(
        FETCH_JS, {"url": stream_path(job_id), "credentials": "include", "timeoutMs": 5_000}
    )
    assert fetched["status"] == 404
    assert "event:" not in fetched["text"]
    # So does an anonymous visitor.
    anonymous = new_context(server.base_url).new_page()
    anonymous.goto("/")
    assert anonymous.evaluate(WATCH_PLAIN_JS, watch_args) == {
        "events": [],
        "errors": [2],
        "readyState": 2,
    }
    assert demo_page.locator("#job").get_attribute("data-status") == "running"

    refused = server.log.streams_refused(job_id, since)
    assert len(refused) == 3, refused
    assert all(r["reason"] == "not allowed" for r in refused)
    assert refused[2]["user"] == "anonymous"
    assert len(server.log.streams_opened(job_id, since)) == 1  # demo's page only

    # Demo's page is unaffected.
    wait_for_status(demo_page, "succeeded")
    assert steps_of(log_lines(demo_page)) == list(range(1, STEPS + 1))
    server.log.assert_no_errors(since)


CROSS_ORIGIN_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Another site</title>
<link rel="icon" href="data:,"></head>
<body><h1>A page of another origin</h1></body></html>
"""


def test_cors_only_for_allowed_origins(site: ExampleSite, server: Daphne, new_context: Any) -> None:
    context = new_context(server.base_url)
    page = log_in(context, "demo")
    job_id = run_report(page)
    wait_for_status(page, "succeeded")
    cookies = cookie_header(context)

    with static_page_server(CROSS_ORIGIN_PAGE) as origin:
        allowing = site.start_server("daphne-cors", cors_origins=[origin])
        since = server.log.offset()
        allowing_since = allowing.log.offset()
        other_site = context.new_page()
        other_site.goto(f"{origin}/page.html")
        assert other_site.evaluate("location.origin") == origin

        def watch(base_url: str) -> dict[str, Any]:
            result: dict[str, Any] = other_site.evaluate(
                WATCH_PLAIN_JS,
                {
                    "url": base_url + stream_path(job_id),
                    "withCredentials": True,
                    "types": LIFECYCLE,
                    "timeoutMs": 8_000,
                    "closeOn": "succeeded",
                },
            )
            return result

        def fetch(base_url: str) -> dict[str, Any]:
            result: dict[str, Any] = other_site.evaluate(
                FETCH_JS,
                {
                    "url": base_url + stream_path(job_id),
                    "credentials": "include",
                    "timeoutMs": 8_000,
                },
            )
            return result

        # The example's server allows no other origin: the browser may not read the stream.
        refused = watch(server.base_url)
        assert refused == {"events": [], "errors": [2], "readyState": 2}
        fetched = fetch(server.base_url)
        assert "TypeError" in fetched.get("rejected", ""), fetched
        # The server did serve the cookie's owner (the cookie went along: same site), but sent
        # no CORS header, so the browser kept the events from the page.
        assert len(server.log.streams_opened(job_id, since)) == 2
        direct = httpx.get(
            server.base_url + stream_path(job_id),
            headers={"Origin": origin, "Cookie": cookies},
            timeout=10,
        )
        assert direct.status_code == 200
        assert "event: succeeded" in direct.text
        assert "access-control-allow-origin" not in direct.headers
        assert "access-control-allow-credentials" not in direct.headers

        # The same site, started with CORS_ALLOWED_ORIGINS = [that origin]: the page reads it.
        allowed = watch(allowing.base_url)
        types = [e["type"] for e in allowed["events"]]
        assert types[0] == "started"
        assert types[-1] == "succeeded"
        assert types.count("log") == STEPS
        assert_ids_follow(allowed["events"], 1)
        fetched = fetch(allowing.base_url)
        assert fetched["status"] == 200, fetched
        assert fetched["contentType"] == "text/event-stream; charset=utf-8"
        assert "event: succeeded" in fetched["text"]
        direct = httpx.get(
            allowing.base_url + stream_path(job_id),
            headers={"Origin": origin, "Cookie": cookies},
            timeout=10,
        )
        assert direct.headers["access-control-allow-origin"] == origin
        assert direct.headers["access-control-allow-credentials"] == "true"
        assert "Origin" in direct.headers["vary"]
        assert len(allowing.log.streams_opened(job_id, allowing_since)) == 3
        allowing.stop()
        allowing.log.assert_no_errors()
    server.log.assert_no_errors(since)


def test_screenshots_of_the_report_page(server: Daphne, new_context: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    running_png = ARTIFACTS / "report-running.png"
    done_png = ARTIFACTS / "report-done.png"
    for path in (running_png, done_png):
        path.unlink(missing_ok=True)
    page = log_in(new_context(server.base_url), "demo")
    run_report(page)
    wait_for_steps(page, 6)

    before = page.evaluate("document.getElementById('job-progress').value")
    page.screenshot(path=str(running_png), full_page=True)
    after = page.evaluate("document.getElementById('job-progress').value")
    assert 0 < before <= after < STEPS, (before, after)
    assert page.locator("#job-connection").get_attribute("data-state") == "open"

    wait_for_status(page, "succeeded")
    page.screenshot(path=str(done_png), full_page=True)

    for path in (running_png, done_png):
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), path
        assert len(data) > 10_000, (path, len(data))


# -- the client library: many jobs and tabs on one connection, the tag, Cancel ----------------
# (The htmx page, htmx 4 and htmx 2: tests/test_htmx.py.)

BATCH_SIZE = 10  # example_project.reports.views.BATCH_SIZE
BATCH_STEPS = 6  # example_project.reports.views.BATCH_STEPS
BARS = "[data-django-sse-job]"


def bar_states(page: Any) -> list[dict[str, Any]]:
    states: list[dict[str, Any]] = page.evaluate(
        """sel => [...document.querySelectorAll(sel)].map(el => {
            const bar = el.querySelector('[role=progressbar]');
            return {
              job: el.dataset.djangoSseJob,
              status: el.dataset.djangoSseStatus,
              seq: Number(el.dataset.djangoSseSeq),
              now: bar.getAttribute('aria-valuenow'),
              max: bar.getAttribute('aria-valuemax'),
              text: el.querySelector('[data-django-sse-bind=status]').textContent,
            };
        })""",
        BARS,
    )
    return states


def wait_for_bars(page: Any, status: str, count: int, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(
        """([sel, status, count]) => [...document.querySelectorAll(sel)]
            .filter(el => el.dataset.djangoSseStatus === status).length >= count""",
        arg=[BARS, status, count],
        timeout=timeout_ms,
    )


def resume_positions(url: str) -> dict[str, int]:
    """The per-job positions (job id prefix -> seq) of an all-jobs stream's resume point."""
    match = re.search(r"last_event_id=([0-9a-z.]+)", url)
    assert match is not None, url
    _, *entries = match[1].split(".")
    return {entry[:8]: int(entry[8:], 36) for entry in entries}


def session_events_by_job(page: Any) -> dict[str, list[tuple[int, str]]]:
    """(seq, type) of every all-jobs stream event the page received, by job id prefix."""
    by_job: dict[str, list[tuple[int, str]]] = {}
    for event in server_events(page):
        envelope = json.loads(event["data"])
        by_job.setdefault(envelope["job"].replace("-", "")[:8], []).append(
            (envelope["seq"], event["type"])
        )
    return by_job


def test_ten_jobs_on_one_connection(server: Daphne, new_context: Any) -> None:
    since = server.log.offset()
    page = new_context(server.base_url).new_page()  # anonymous: only this batch is listed
    page.goto("/")
    page.get_by_role("button", name="Run ten reports").click()
    page.wait_for_url(re.compile(r"/$"))
    assert page.locator(BARS).count() == BATCH_SIZE

    wait_for_bars(page, "succeeded", BATCH_SIZE)

    states = bar_states(page)
    assert [s["status"] for s in states] == ["succeeded"] * BATCH_SIZE
    assert all(s["now"] == s["max"] == str(BATCH_STEPS) for s in states), states
    assert all(s["text"] == "Succeeded" for s in states), states
    # One EventSource for the ten bars, narrowed to them.
    sources = [e for e in recorded(page) if e["kind"] == "new"]
    assert len(sources) == 1, sources
    assert "/sse/events/?jobs=" in sources[0]["url"]
    assert all(s["job"] in unquote(sources[0]["url"]) for s in states)
    # Every job's events once, in order, from right after what the page was rendered with.
    start = resume_positions(sources[0]["url"])
    received = session_events_by_job(page)
    for state in states:
        ref = state["job"].replace("-", "")[:8]
        seqs = [seq for seq, _ in received.get(ref, [])]
        assert seqs == list(range(start[ref] + 1, state["seq"] + 1)), (ref, start[ref], seqs)
        assert received[ref][-1][1] == "succeeded"
    opened = server.log.session_streams_opened(since)
    print(f"ten-job page: {len(sources)} EventSource, {len(opened)} stream(s) opened on the server")
    assert len(opened) == 1, opened
    server.log.assert_no_errors(since)


def test_three_tabs_share_one_connection_and_hand_it_over(server: Daphne, new_context: Any) -> None:
    since = server.log.offset()
    context = new_context(server.base_url)
    first = context.new_page()
    job_id = run_report(first)
    job_url = first.url
    tabs = [first]
    for _ in range(2):
        tab = context.new_page()
        tab.goto(job_url)
        tabs.append(tab)
    wait_for_steps(tabs[2], 4)
    opened = server.log.streams_opened(job_id, since)
    print(f"three tabs of one job page: {len(opened)} stream(s) opened on the server")
    assert len(opened) == 1, opened
    # Only the first tab has an EventSource; the others are fed by it.
    assert [len([e for e in recorded(t) if e["kind"] == "new"]) for t in tabs] == [1, 0, 0]

    # The tab holding the connection goes away mid-run: another one takes over.
    first.close()
    for tab in tabs[1:]:
        wait_for_status(tab, "succeeded")
    for tab in tabs[1:]:
        assert steps_of(log_lines(tab)) == list(range(1, STEPS + 1))
        assert tab.locator("#job-badge").text_content() == "Succeeded"
    opened = server.log.streams_opened(job_id, since)
    assert len(opened) == 2, opened
    # The new connection resumed where the tabs were, not from the start.
    assert int(opened[1]["resume"]) >= 4, opened
    taken_over = [len([e for e in recorded(t) if e["kind"] == "new"]) for t in tabs[1:]]
    assert sorted(taken_over) == [0, 1], taken_over
    server.log.assert_no_errors(since)


def test_template_tag_shows_the_state_without_javascript(server: Daphne, browser: Any) -> None:
    context = browser.new_context(base_url=server.base_url, java_script_enabled=False)
    try:
        context.set_default_timeout(15_000)
        page = log_in(context, "demo")
        job_id = run_report(page)  # the forms work without JavaScript
        page.wait_for_timeout(2_500)  # a few steps
        page.goto("/")
        bar = page.locator(f'[data-django-sse-job="{job_id}"] [role=progressbar]')
        now = int(bar.get_attribute("aria-valuenow") or "-1")
        assert 0 <= now < STEPS
        assert bar.get_attribute("aria-valuemax") == str(STEPS)
        assert bar.get_attribute("aria-valuetext") == (
            f"{now} of {STEPS} ({round(100 * now / STEPS)}%)"
        )
        label = page.locator(f"#{bar.get_attribute('aria-labelledby')}").text_content()
        assert label == "Sales report"
        status = page.locator(f'[data-django-sse-job="{job_id}"] [data-django-sse-bind=status]')
        assert status.text_content() == "Running"
        # Later, the server renders the newer state (no script ran on this page).
        page.wait_for_timeout(1_500)
        page.reload()
        assert int(bar.get_attribute("aria-valuenow") or "-1") > now
    finally:
        context.close()


def test_cancel_from_the_job_page_and_from_a_bar(server: Daphne, new_context: Any) -> None:
    since = server.log.offset()
    page = log_in(new_context(server.base_url), "demo")
    job_id = run_report(page)
    wait_for_steps(page, 2)
    page.get_by_role("button", name="Cancel").click()
    wait_for_status(page, "cancelled")
    assert page.locator("#job-badge").text_content() == "Cancelled"
    types = [e["type"] for e in server_events(page)]
    assert types.count("cancel_requested") == 1, types
    assert types[-1] == "cancelled", types
    # The worker reads the request at most CANCEL_CHECK_SECONDS (1 s, django_sse's default)
    # after it was made: up to 1 / STEP_SECONDS + 1 steps (a log line and a progress value
    # each) may come between the request and the end, never more.
    between = types[types.index("cancel_requested") + 1 : -1]
    steps_between = int(1.0 / STEP_SECONDS) + 1
    assert set(between) <= {"log", "progress"} and len(between) <= 2 * steps_between, types
    assert len(log_lines(page)) < STEPS
    assert f"Cancel requested: job={job_id}" in server.log.text(since)

    # The same from the home page's bar (the template tag's Cancel button).
    other = run_report(page)
    page.goto("/")
    row = page.locator(f'[data-django-sse-job="{other}"]')
    row.get_by_role("button", name="Cancel").click()
    page.wait_for_function(
        "id => document.querySelector(`[data-django-sse-job='${id}']`)"
        ".dataset.djangoSseStatus === 'cancelled'",
        arg=other,
        timeout=JOB_TIMEOUT_MS,
    )
    assert row.locator("[data-django-sse-bind=status]").text_content() == "Cancelled"
    assert row.get_by_role("button", name="Cancel").is_hidden()
    server.log.assert_no_errors(since)


def test_tabs_of_another_login_do_not_share(server: Daphne, new_context: Any) -> None:
    """One browser profile: a tab follows demo's job; another tab logs in as "other" and asks
    for the same stream. It must not be fed by the first tab (the server would say 404)."""
    context = new_context(server.base_url)
    first = log_in(context, "demo")
    job_id = run_report(first)
    wait_for_steps(first, 2)
    # Log in as "other" in a second tab: a new session; demo's tab keeps its page.
    second = context.new_page()
    second.goto("/accounts/login/")
    second.fill("input[name=username]", "other")
    second.fill("input[name=password]", "other")
    second.click("form.login button[type=submit]")  # not the header's "Log out"
    second.wait_for_function(
        "() => document.querySelector('.site-header strong')?.textContent === 'other'"
    )
    result = second.evaluate(
        """async ({ url, waitMs }) => {
            const seen = [];
            const states = [];
            const watcher = DjangoSSE.watch(url, {
              lastEventId: 0, events: ["log"],
              onEvent(type) { seen.push(type); },
              onStatus(state) { states.push(state); },
            });
            await new Promise((resolve) => setTimeout(resolve, waitMs));
            watcher.close();
            return { seen, states };
        }""",
        {"url": stream_path(job_id), "waitMs": 3_000},
    )
    assert result["seen"] == [], result
    # Its own connection, refused with the common 404, ends the watch.
    assert result["states"][-1] == "closed", result
    assert server.log.streams_refused(job_id), "the second tab never asked the server"
    wait_for_status(first, "succeeded")
    assert steps_of(log_lines(first)) == list(range(1, STEPS + 1))

"""Real-browser tests of what a ``{% django_sse_progress %}`` bar says: when the page is not
live (a WSGI server, an answer that is not an event stream, a missing script or stylesheet),
and how a job ended (a cancel the task ignores ends in its final state, not "Stopping…").

Headless Chromium (Playwright) on the example project's home page, whose bars the template tag
renders. No worker runs: each test plays the task itself, from a ``manage.py shell`` of the
same site (its events reach the server as a worker's would, through the database or Redis).
Chromium, Playwright, PostgreSQL and Redis as in ``tests/test_browser.py``: skipped without
them, failing under ``CI=true``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.live.browser_support import (
    Daphne,
    ExampleSite,
    check_browser,
    check_services,
    launched_chromium,
    wsgi_server,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

# The client's wait for a first answer (OPEN_TIMEOUT_MS in django_sse.js), and the CSS delay
# before the tag's "script did not load" text shows.
OPEN_TIMEOUT_MS = 5_000
SCRIPT_TEXT_DELAY_MS = 3_000
STALLED = "Live updates are unavailable: the server does not answer."
UNAVAILABLE = "Live updates are unavailable: the server did not send them."
SCRIPT_MISSING = (
    "Live updates are unavailable: the page\u2019s script did not load. "
    "Reload the page to see the latest."
)
NO_STYLESHEET = "The progress bar cannot be drawn: its stylesheet did not load."


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site() -> Iterator[ExampleSite]:
    check_browser()
    check_services()
    site = ExampleSite(step_seconds=0.1)
    try:
        site.setup()  # no worker: the tests play the task
        yield site
    finally:
        site.close()


@pytest.fixture(scope="module")
def server(site: ExampleSite) -> Daphne:
    return site.start_server("daphne")


@pytest.fixture(scope="module")
def browser(site: ExampleSite) -> Iterator[Any]:
    with launched_chromium() as browser:
        yield browser


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    """Pages in contexts of their own, logged in as demo; each records its console."""
    contexts: list[Any] = []

    def make(base_url: str) -> Any:
        context = browser.new_context(base_url=base_url)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.console_lines = []
        page.on("console", lambda message: page.console_lines.append(message.text))
        page.goto("/accounts/login/")
        page.fill("input[name=username]", "demo")
        page.fill("input[name=password]", "demo")
        page.click("form.login button[type=submit]")
        page.wait_for_url(re.compile(r"/$"))
        return page

    yield make
    for context in contexts:
        context.close()


# -- the task, played from a shell of the site ------------------------------------------------


def start_job(site: ExampleSite) -> str:
    """A running job of demo's at step 1 of 4; returns its id."""
    out = site.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\n"
        "from django_sse.models import Job\n"
        "job = Job.objects.create(owner=User.objects.get(username='demo'), name='Export')\n"
        "job.start()\n"
        "job.set_progress(1, 4, 'Step 1')\n"
        "job.flush_progress()\n"
        "print('JOB', job.pk)\n",
    )
    match = re.search(r"^JOB ([0-9a-f-]{36})$", out, re.MULTILINE)
    assert match is not None, out
    return match[1]


def finish_ignoring_cancel(site: ExampleSite, job_id: str) -> None:
    """What a task that never checks ``job.cancel_requested()`` does: it carries on and
    succeeds."""
    site.manage(
        "shell",
        "-c",
        "from django_sse.models import Job\n"
        f"job = Job.objects.get(pk='{job_id}')\n"
        "assert job.cancel_requested_at is not None, 'no cancel was requested'\n"
        "job.set_progress(4, 4, 'Step 4')\n"
        "job.flush_progress()\n"
        "job.succeed({'rows': 4})\n",
    )


# -- what a bar shows -------------------------------------------------------------------------


def bar(page: Any, job_id: str) -> Any:
    return page.locator(f'[data-django-sse-job="{job_id}"]')


def part(page: Any, job_id: str, name: str) -> Any:
    return bar(page, job_id).locator(f'[data-django-sse-bind="{name}"]')


def wait_for_text(page: Any, job_id: str, name: str, text: str, timeout_ms: int) -> None:
    page.wait_for_function(
        """([job, name, text]) => {
            const el = document.querySelector(
              `[data-django-sse-job="${job}"] [data-django-sse-bind="${name}"]`);
            return el !== null && !el.hidden && el.textContent === text;
        }""",
        arg=[job_id, name, text],
        timeout=timeout_ms,
    )


def wait_for_connection(page: Any, job_id: str, state: str, timeout_ms: int = 15_000) -> None:
    page.wait_for_function(
        '([job, state]) => document.querySelector(`[data-django-sse-job="${job}"]`)'
        ".dataset.djangoSseConnection === state",
        arg=[job_id, state],
        timeout=timeout_ms,
    )


# -- the tests --------------------------------------------------------------------------------


def test_wsgi_server_the_bar_says_it_is_not_live(site: ExampleSite, new_page: Any) -> None:
    with wsgi_server(site) as wsgi:
        page = new_page(wsgi.base_url)
        job_id = start_job(site)
        page.goto("/")
        # The page is right as rendered, and the script runs (WSGI serves static files too).
        assert part(page, job_id, "status").text_content() == "Running"
        assert part(page, job_id, "message").text_content() == "Step 1"
        page.wait_for_selector(f'[data-django-sse-job="{job_id}"][data-django-sse-bound]')
        # The stream never answers: the server collects it before sending a byte.
        wait_for_text(page, job_id, "connection", STALLED, OPEN_TIMEOUT_MS + 10_000)
        assert part(page, job_id, "connection").is_visible()
        assert bar(page, job_id).get_attribute("data-django-sse-connection") == "stalled"
        console = "\n".join(page.console_lines)
        assert "DjangoSSE: no answer from" in console, console
        assert "put 'daphne' first in INSTALLED_APPS" in console, console
        # The server did open the stream (and is collecting it, with nothing sent).
        assert len(wsgi.log.session_streams_opened()) == 1, wsgi.log.text()


def test_an_answer_that_is_not_an_event_stream(
    site: ExampleSite, server: Daphne, new_page: Any
) -> None:
    page = new_page(server.base_url)
    job_id = start_job(site)
    # What a login page or an HTML error page does to the stream: a 200 that is HTML.
    page.route(
        re.compile(r"/sse/events/"),
        lambda route: route.fulfill(
            status=200,
            content_type="text/html; charset=utf-8",
            body="<!DOCTYPE html><title>Log in</title><form>...</form>",
        ),
    )
    page.goto("/")
    wait_for_text(page, job_id, "connection", UNAVAILABLE, 15_000)
    assert part(page, job_id, "status").text_content() == "Running"
    console = "\n".join(page.console_lines)
    assert "did not answer with an event stream" in console, console
    assert "a login page" in console, console


def test_live_again_clears_the_message(site: ExampleSite, server: Daphne, new_page: Any) -> None:
    page = new_page(server.base_url)
    job_id = start_job(site)
    # The first request hangs (as under a WSGI server) until the test lets it through.
    held: list[Any] = []
    page.route(re.compile(r"/sse/events/"), lambda route: held.append(route))
    page.goto("/")
    wait_for_text(page, job_id, "connection", STALLED, OPEN_TIMEOUT_MS + 10_000)
    assert len(held) == 1
    held[0].continue_()
    wait_for_connection(page, job_id, "open")
    assert part(page, job_id, "connection").is_hidden()


def test_stylesheet_404_the_bar_says_so(site: ExampleSite, server: Daphne, new_page: Any) -> None:
    page = new_page(server.base_url)
    job_id = start_job(site)
    page.route(re.compile(r"/django_sse\.css$"), lambda route: route.fulfill(status=404))
    page.goto("/")
    wait_for_text(page, job_id, "connection", NO_STYLESHEET, 15_000)
    console = "\n".join(page.console_lines)
    assert "DjangoSSE: the stylesheet" in console, console
    assert "collectstatic" in console, console
    # Live all the same: the connection opened, and the message stays (it is not about it).
    wait_for_connection(page, job_id, "open")
    assert part(page, job_id, "connection").text_content() == NO_STYLESHEET


def test_stylesheet_loaded_no_message(site: ExampleSite, server: Daphne, new_page: Any) -> None:
    page = new_page(server.base_url)
    job_id = start_job(site)
    page.goto("/")
    wait_for_connection(page, job_id, "open")
    assert part(page, job_id, "connection").is_hidden()
    assert "DjangoSSE" not in "\n".join(page.console_lines)


@pytest.mark.parametrize("missing", ["script", "script and stylesheet"])
def test_script_404_the_tag_text_shows(
    site: ExampleSite, server: Daphne, new_page: Any, missing: str
) -> None:
    page = new_page(server.base_url)
    job_id = start_job(site)
    page.route(re.compile(r"/django_sse\.js$"), lambda route: route.fulfill(status=404))
    if missing == "script and stylesheet":  # uvicorn without static files: both 404
        page.route(re.compile(r"/django_sse\.css$"), lambda route: route.fulfill(status=404))
    page.goto("/")
    connection = part(page, job_id, "connection")
    connection.wait_for(state="visible", timeout=SCRIPT_TEXT_DELAY_MS + 10_000)
    assert connection.text_content() == SCRIPT_MISSING
    assert part(page, job_id, "status").text_content() == "Running"


def test_cancel_the_task_ignores_ends_in_its_final_state(
    site: ExampleSite, server: Daphne, new_page: Any
) -> None:
    since = server.log.offset()
    page = new_page(server.base_url)
    job_id = start_job(site)
    page.goto("/")
    wait_for_connection(page, job_id, "open")
    assert part(page, job_id, "message").text_content() == "Step 1"

    bar(page, job_id).get_by_role("button", name="Cancel").click()
    wait_for_text(page, job_id, "message", "Stopping…", 15_000)
    finish_ignoring_cancel(site, job_id)

    page.wait_for_function(
        'job => document.querySelector(`[data-django-sse-job="${job}"]`)'
        ".dataset.djangoSseStatus === 'succeeded'",
        arg=job_id,
        timeout=20_000,
    )
    assert part(page, job_id, "status").text_content() == "Succeeded"
    assert part(page, job_id, "message").text_content() == "Done"
    assert part(page, job_id, "percent").text_content() == "100%"
    assert "Stopping" not in (bar(page, job_id).inner_text())
    assert bar(page, job_id).get_attribute("data-django-sse-cancel-requested") is None
    # A reload shows the same, rendered by the server.
    page.reload()
    assert part(page, job_id, "status").text_content() == "Succeeded"
    assert part(page, job_id, "message").text_content() == "Done"
    assert "Stopping" not in (bar(page, job_id).inner_text())
    server.log.assert_no_errors(since)

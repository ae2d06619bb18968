"""README.rst's Quick start, followed to the letter in a new project and watched in Chromium.

The region between ``.. quickstart-start`` and ``.. quickstart-end`` is read, its commands run
and its files written in a temporary directory (``startproject mysite``, ``startapp reports``,
the settings lines appended, ...: see ``tests/live/quickstart_support.py``). Then its server (and
for the second way its ``db_worker``) run as subprocesses, and headless Chromium presses the button:
the progress bar must be seen moving below 100% and then done, and a visitor without the
owner's session must get 404 from the job's page and from its stream.

Nothing here paces the work: the snippet's own 20 steps of 0.2 s are slow enough to be seen
live. Chromium and Playwright are required under ``CI=true``; elsewhere their absence skips.
``BROWSER_KEEP_LOGS=1`` keeps the project and its logs (the folder is printed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.live.browser_support import (
    FETCH_JS,
    check_browser,
    launched_chromium,
)
from tests.live.quickstart_support import (
    QuickstartProject,
    quickstart_blocks,
    task_way,
    thread_way,
)

# A project of its own on SQLite, whatever DATABASE_URL says: nox runs it in the SQLite cells only.
pytestmark = pytest.mark.quickstart

JOB_PATH = re.compile(r"/reports/(?P<job>[0-9a-f-]{36})/$")
# The snippet's job: 20 steps of 0.2 s. Bounds on waiting for it, not its pace.
STEPS = 20
JOB_TIMEOUT_MS = 40_000

# Records, from the first parse of the page on, every state the job's bar shows: the rendered
# one first ("rendered": true), then one entry per change made by django_sse.js.
BAR_RECORDER_JS = r"""
(() => {
  const seen = (window.__bar = []);
  const snapshot = (rendered) => {
    const job = document.querySelector("[data-django-sse-job]");
    if (!job) { return; }
    const bar = job.querySelector("[role=progressbar]");
    const entry = {
      rendered,
      status: job.getAttribute("data-django-sse-status"),
      now: bar.getAttribute("aria-valuenow"),
      max: bar.getAttribute("aria-valuemax"),
      percent: (job.querySelector("[data-django-sse-bind=percent]") || {}).textContent || "",
    };
    const last = seen[seen.length - 1];
    if (!last || last.status !== entry.status || last.now !== entry.now) { seen.push(entry); }
  };
  document.addEventListener("DOMContentLoaded", () => {
    snapshot(true);
    const job = document.querySelector("[data-django-sse-job]");
    if (job) {
      new MutationObserver(() => snapshot(false)).observe(job, {
        attributes: true, subtree: true, childList: true, characterData: true,
      });
    }
  });
})();
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    check_browser()
    with launched_chromium() as browser:
        yield browser


@pytest.fixture
def project() -> Iterator[QuickstartProject]:
    project = QuickstartProject()
    try:
        yield project
    finally:
        project.close()


def new_context(browser: Any, base_url: str) -> Any:
    context = browser.new_context(base_url=base_url)
    context.set_default_timeout(15_000)
    return context


def run_a_report(browser: Any, base_url: str) -> tuple[Any, str, list[dict[str, Any]]]:
    """Press the Quick start's button and watch the job's page until the job has succeeded.
    Returns the browser context (with the owner's session), the job id and the bar's states."""
    context = new_context(browser, base_url)
    context.add_init_script(BAR_RECORDER_JS)
    page = context.new_page()
    response = page.goto("/")
    assert response is not None and response.status == 200
    page.get_by_role("button", name="Run a report").click()
    page.wait_for_url(JOB_PATH)
    match = JOB_PATH.search(page.url)
    assert match is not None
    page.wait_for_function(
        "() => (window.__bar || []).some((s) => s.status === 'succeeded')",
        timeout=JOB_TIMEOUT_MS,
    )
    states: list[dict[str, Any]] = page.evaluate("window.__bar")
    page.close()
    return context, match["job"], states


def assert_seen_live(states: list[dict[str, Any]]) -> None:
    """The page was rendered before the end, and the script moved the bar below 100% (running)
    and then to 100% (succeeded): live, not rendered finished."""
    assert states, "the page has no progress bar"
    rendered, live = states[0], states[1:]
    assert rendered["rendered"] and rendered["status"] in ("pending", "running"), states
    moving = [
        s for s in live if s["status"] == "running" and s["now"] and 0 < int(s["now"]) < STEPS
    ]
    assert moving, f"the bar never moved below 100% while running: {states}"
    last = live[-1]
    assert last["status"] == "succeeded", states
    assert (last["now"], last["max"], last["percent"]) == (str(STEPS), str(STEPS), "100%"), states
    assert live.index(moving[0]) < live.index(last)


def assert_stranger_gets_404(browser: Any, base_url: str, owner: Any, job_id: str) -> None:
    page_path = f"/reports/{job_id}/"
    stream_path = f"/sse/jobs/{job_id}/events/"
    cookies = {c["name"]: c["value"] for c in owner.cookies()}

    # The owner's session reads both (so the 404s below are about the visitor, not the URLs).
    with httpx.Client(base_url=base_url, cookies=cookies, timeout=10) as client:
        assert client.get(page_path).status_code == 200
        with client.stream("GET", stream_path) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")

    # Another browser: a session of its own.
    stranger = new_context(browser, base_url)
    try:
        page = stranger.new_page()
        response = page.goto(page_path)
        assert response is not None and response.status == 404
        fetched = page.evaluate(
            FETCH_JS, {"url": stream_path, "credentials": "same-origin", "timeoutMs": 10_000}
        )
        assert fetched.get("status") == 404, fetched
    finally:
        stranger.close()

    # No cookie at all.
    with httpx.Client(base_url=base_url, timeout=10) as client:
        assert client.get(page_path).status_code == 404
        assert client.get(stream_path).status_code == 404


@pytest.mark.timeout(120)
def test_quick_start_project_is_complete_and_passes_the_checks(
    project: QuickstartProject,
) -> None:
    """No browser needed: the first way's commands run and its files are written as the README
    says (its migrate included), and the project has no system check warning."""
    project.follow(thread_way(quickstart_blocks()))
    assert project.applied[:3] == [
        "checked django-sse-jobs installed",
        "ran django-admin startproject mysite",
        "ran python manage.py startapp reports",
    ]
    assert {
        "wrote mysite/urls.py",
        "wrote reports/views.py",
        "ran python manage.py migrate",
    } <= set(project.applied), project.applied
    assert project.server_command is not None
    assert "System check identified no issues" in project.check()


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_quick_start_with_a_thread_shows_a_live_bar_to_its_owner_only(
    browser: Any, project: QuickstartProject
) -> None:
    project.follow(thread_way(quickstart_blocks()))
    assert project.worker_command is None, "the thread way needs no worker"
    base_url = project.start_server()

    owner, job_id, states = run_a_report(browser, base_url)
    try:
        assert_seen_live(states)
        assert_stranger_gets_404(browser, base_url, owner, job_id)
    finally:
        owner.close()
    project.assert_no_errors()


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_quick_start_with_a_task_worker_shows_a_live_bar_to_its_owner_only(
    browser: Any, project: QuickstartProject
) -> None:
    project.follow(task_way(quickstart_blocks()))
    project.check()
    project.start_worker()
    base_url = project.start_server()

    owner, job_id, states = run_a_report(browser, base_url)
    try:
        assert_seen_live(states)
        assert_stranger_gets_404(browser, base_url, owner, job_id)
    finally:
        owner.close()

    # The work ran in the worker: the database backend recorded the task, and a worker ran it
    # (the default backend would have run it inside the request, recording nothing).
    tasks = project.task_results()
    assert len(tasks) == 1, tasks
    status, worker_ids, args_kwargs = tasks[0]
    assert status == "SUCCESSFUL", project.logs()
    assert worker_ids not in (None, "[]"), tasks
    assert job_id in str(args_kwargs), tasks
    project.assert_no_errors()

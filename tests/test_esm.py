"""The client as an ES module: ``django_sse.mjs`` is the classic script's code (generated from it,
and in sync), ``package.json`` lets a front-end build depend on it by path, and a real page
imports it with ``<script type="module">`` and sees a job's events arrive.

The browser test runs the example project as ``tests/test_browser.py`` does (Daphne and a
``db_worker``, see ``tests/live/browser_support.py``): headless Chromium, the page served at the
example's origin by Playwright (``page.route``) so that the module and the stream are
same-origin, the module from the example's static files.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import django_sse
from tests.live.browser_support import (
    Daphne,
    ExampleSite,
    check_browser,
    check_services,
    example_site,
    launched_chromium,
)

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "django_sse" / "static" / "django_sse"
GENERATOR = ROOT / "scripts" / "build_client_module.py"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_client_module", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- one source of truth ------------------------------------------------------------------------


def test_the_module_is_generated_from_the_classic_script() -> None:
    generator = load_generator()
    script = (STATIC / "django_sse.js").read_text(encoding="utf-8")
    module = (STATIC / "django_sse.mjs").read_text(encoding="utf-8")
    assert module == generator.render(script), (
        "django_sse.mjs is not up to date with django_sse.js: "
        "run python scripts/build_client_module.py"
    )


def test_the_generator_carries_edits_over_and_its_check_passes() -> None:
    generator = load_generator()
    script = (STATIC / "django_sse.js").read_text(encoding="utf-8")
    edited = script.replace("const BUFFER_EVENTS = 5000;", "const BUFFER_EVENTS = 10;")
    assert edited != script
    assert "const BUFFER_EVENTS = 10;" in generator.render(edited)
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_all_of_the_client_is_in_the_module_body() -> None:
    """Outside the shared body the script holds only its wrapper: code added there would be
    missing from the module."""
    script = (STATIC / "django_sse.js").read_text(encoding="utf-8")
    before, rest = script.split("// <module-body>", 1)
    _, after = rest.split("// </module-body>", 1)
    code = [
        line.strip()
        for line in (before + after).splitlines()
        if line.strip() and not line.strip().startswith(("/*", "*", "//"))
    ]
    assert code == [
        "(function (root) {",
        '"use strict";',
        "root.DjangoSSE = DjangoSSE;",
        "start();",
        "})(globalThis);",
    ]


# -- package.json -------------------------------------------------------------------------------


def package_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((STATIC / "package.json").read_text(encoding="utf-8"))
    return data


def test_package_json_has_the_python_package_version() -> None:
    assert package_json()["version"] == django_sse.__version__


def test_package_json_points_at_the_module_and_its_types() -> None:
    package = package_json()
    assert package["name"] == "django-sse-jobs"
    assert package["type"] == "module"
    assert package["types"] == "./django_sse.d.ts"
    assert package["exports"]["."] == {"types": "./django_sse.d.ts", "default": "./django_sse.mjs"}
    # Every path it names is there, and every file it ships is named.
    targets = [package["main"], package["module"], package["types"]]
    targets += [t for t in package["exports"].values() if isinstance(t, str)]
    targets += list(package["exports"]["."].values())
    for target in targets:
        assert (STATIC / target).is_file(), target
    shipped = {path.name for path in STATIC.iterdir()} - {"package.json"}
    assert set(package["files"]) == shipped


# -- in a browser -------------------------------------------------------------------------------

STEP_SECONDS = 0.25
STEPS = 20
JOB_TIMEOUT_MS = 40_000
JOB_PATH = re.compile(r"/reports/(?P<job>[0-9a-f-]{36})/$")
# A page of the example's origin (served by Playwright) with no script but the module.
PAGE_PATH = "/es-module-page/"
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ES module</title></head>
<body>
  <div id="bar" data-django-sse-job="{job}" data-django-sse-url="/sse/events/"
       data-django-sse-status="running" data-django-sse-seq="0">
    <span data-django-sse-bind="status"></span>
    <div data-django-sse-bind="progress" role="progressbar"></div>
    <span data-django-sse-bind="percent"></span>
  </div>
  <script type="module">
    import DjangoSSE, {{ watch, TERMINAL_TYPES }} from "/static/django_sse/django_sse.mjs";
    const seen = (window.__esm = {{
      events: [], states: [], result: undefined, done: false,
      global: typeof window.DjangoSSE, terminal: TERMINAL_TYPES, same: DjangoSSE.watch === watch,
    }});
    // Render first, then stream from the snapshot's last_seq: every later event once.
    const response = await fetch("/sse/jobs/{job}/", {{ credentials: "same-origin" }});
    seen.snapshot = await response.json();
    watch("/sse/jobs/{job}/events/", {{
      lastEventId: seen.snapshot.last_seq,
      events: ["log"],
      onEvent: (type, data, id) => seen.events.push({{ type, id }}),
      onStatus: (state) => seen.states.push(state),
      onSuccess: (result) => {{ seen.result = result; seen.done = true; }},
    }});
  </script>
</body></html>
"""


@pytest.fixture(scope="module")
def site() -> Iterator[ExampleSite]:
    check_browser()
    check_services()
    with example_site(STEP_SECONDS) as site:
        yield site


@pytest.fixture(scope="module")
def server(site: ExampleSite) -> Daphne:
    return site.start_server("daphne")


@pytest.fixture
def context(server: Daphne) -> Iterator[Any]:
    with launched_chromium() as browser:
        context = browser.new_context(base_url=server.base_url)
        context.set_default_timeout(15_000)
        yield context


def start_report(context: Any) -> tuple[Any, str]:
    """Log in as demo and press "Run report"; the page and the job's id."""
    page = context.new_page()
    page.goto("/accounts/login/")
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/$"))
    page.get_by_role("button", name="Run report").click()
    page.wait_for_url(JOB_PATH)
    match = JOB_PATH.search(page.url)
    assert match is not None
    return page, match["job"]


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_a_page_imports_the_module_and_follows_a_job(server: Daphne, context: Any) -> None:
    since = server.log.offset()
    page, job = start_report(context)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    module_types: list[str] = []
    page.on(
        "response",
        lambda response: (
            module_types.append(response.headers.get("content-type", ""))
            if response.url.endswith("/django_sse.mjs")
            else None
        ),
    )
    html = PAGE.format(job=job)
    page.route(
        f"**{PAGE_PATH}",
        lambda route: route.fulfill(status=200, content_type="text/html", body=html),
    )
    page.goto(PAGE_PATH)
    page.wait_for_function("window.__esm && window.__esm.done", timeout=JOB_TIMEOUT_MS)
    # The bound bar follows on its own connection (the all-jobs stream).
    page.wait_for_function(
        "document.getElementById('bar').dataset.djangoSseStatus === 'succeeded'", timeout=10_000
    )

    seen = page.evaluate("window.__esm")
    assert seen["global"] == "undefined"  # the module sets no global
    assert seen["same"] is True
    assert seen["terminal"] == ["succeeded", "failed", "cancelled"]
    # Every event after the snapshot's last_seq once, in order, to the end.
    first = seen["snapshot"]["last_seq"] + 1
    ids = [int(event["id"]) for event in seen["events"]]
    assert ids == list(range(first, first + len(ids))), ids
    assert seen["events"][-1]["type"] == "succeeded"
    assert seen["result"]["steps"] == STEPS
    assert seen["states"] == ["connecting", "open", "closed"]
    assert page.locator("#bar [data-django-sse-bind=percent]").text_content() == "100%"
    assert module_types, "the module was not fetched"
    assert module_types[0].split(";")[0] in ("text/javascript", "application/javascript")
    assert problems == []
    server.log.assert_no_errors(since)

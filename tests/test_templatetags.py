"""``{% load django_sse %}``: the progress bar tag, the bar alone, and the assets tag."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.template import Context, Template, TemplateSyntaxError
from django.test import RequestFactory
from django.utils import translation

from django_sse import publish
from django_sse.models import Job
from tests.utils import make_session

pytestmark = pytest.mark.django_db


def render(source: str, **context: object) -> str:
    return Template("{% load django_sse %}" + source).render(Context(context))


def attribute(html: str, name: str) -> str | None:
    match = re.search(rf'\s{re.escape(name)}="([^"]*)"', html)
    return match.group(1) if match else None


@pytest.fixture
def job() -> Job:
    owner = User.objects.create_user("owner")
    return Job.objects.create(owner=owner, name="Export <2026>")


def message_of(html: str) -> str:
    """The text of the bar's message part, "" when it is hidden."""
    match = re.search(r'data-django-sse-bind="message"( hidden)?>([^<]*)</span>', html)
    assert match is not None, html
    return "" if match.group(1) else match.group(2)


def connection_text(html: str) -> str:
    match = re.search(
        r'data-django-sse-bind="connection" role="status"( hidden)?>([^<]*)</p>', html
    )
    assert match is not None, html
    return "" if match.group(1) else match.group(2)


def running(job: Job, current: int, total: int | None, message: str = "") -> Job:
    job.start()
    job.set_progress(current, total, message)
    job.flush_progress()
    job.refresh_from_db()
    return job


def test_running_job_renders_its_current_state(job: Job) -> None:
    running(job, 8, 20, "Reading orders")
    html = render("{% django_sse_progress job %}", job=job)
    assert attribute(html, "data-django-sse-job") == str(job.pk)
    assert attribute(html, "data-django-sse-seq") == str(job.last_seq) == "2"
    assert attribute(html, "data-django-sse-status") == "running"
    assert attribute(html, "data-django-sse-url") == "/sse/events/"
    assert 'role="progressbar"' in html
    assert attribute(html, "aria-valuemin") == "0"
    assert attribute(html, "aria-valuenow") == "8"
    assert attribute(html, "aria-valuemax") == "20"
    assert attribute(html, "aria-valuetext") == "8 of 20 (40%)"
    assert "--django-sse-percent: 40%" in html
    assert ">40%</span>" in html
    assert ">Reading orders</span>" in html
    assert ">Running</span>" in html
    # The job's name labels the bar, escaped, for screen readers only: the page around the bar
    # usually shows the name already (a heading, a link).
    label_id = attribute(html, "aria-labelledby")
    assert label_id is not None
    assert (
        '<span class="django-sse-job__label django-sse-visually-hidden" '
        f'id="{label_id}">Export &lt;2026&gt;</span>'
    ) in html


def test_pending_job_without_total_is_indeterminate(job: Job) -> None:
    html = render("{% django_sse_progress job %}", job=job)
    assert 'role="progressbar"' in html
    # ARIA: an indeterminate bar has no aria-valuenow.
    assert "aria-valuenow" not in html
    assert "aria-valuetext" not in html
    assert attribute(html, "data-django-sse-status") == "pending"
    assert attribute(html, "data-django-sse-connection") == "connecting"


def test_cancel_button_and_log(job: Job) -> None:
    running(job, 1, 3)
    publish(job, "log", {"line": "first <line>"})
    publish(job, "log", "a bare string")
    job.refresh_from_db()
    html = render("{% django_sse_progress job cancel=True log=True %}", job=job)
    assert attribute(html, "data-django-sse-cancel-url") == f"/sse/jobs/{job.pk}/cancel/"
    assert re.search(r'<button type="button"[^>]*data-django-sse-bind="cancel"[^>]*>Cancel<', html)
    assert "<li>first &lt;line&gt;</li><li>a bare string</li>" in html


def test_finished_job_hides_cancel_and_says_closed(job: Job) -> None:
    running(job, 3, 3)
    job.succeed({"rows": 3})
    job.refresh_from_db()
    html = render("{% django_sse_progress job cancel=True %}", job=job)
    assert re.search(r'data-django-sse-bind="cancel"[^>]* hidden>', html)
    assert attribute(html, "data-django-sse-connection") == "closed"
    assert ">Succeeded</span>" in html
    assert message_of(html) == "Done"
    # Nothing to keep live: no "script did not load" text either.
    assert connection_text(html) == ""


def test_same_job_twice_gets_distinct_ids(job: Job) -> None:
    html = render("{% django_sse_progress job %}{% django_sse_progress job %}", job=job)
    ids = re.findall(r'<div class="django-sse-job" id="([^"]+)"', html)
    assert len(ids) == 2
    assert ids[0] != ids[1]


def test_label_override_and_labels_for_the_client(job: Job) -> None:
    html = render('{% django_sse_progress job label="Monthly export" %}', job=job)
    # A label given is shown.
    assert re.search(r'<span class="django-sse-job__label" id="[^"]+">Monthly export</span>', html)
    raw = attribute(html, "data-django-sse-labels")
    assert raw is not None
    labels = json.loads(raw.replace("&quot;", '"'))
    assert labels["reconnecting"] == "Reconnecting…"
    assert labels["succeeded"] == "Succeeded"
    assert labels["progress"] == "{current} of {total} ({percent}%)"
    assert labels["done"] == "Done"
    assert labels["failed_error"] == "Failed: {error}"
    assert labels["stalled"] == "Live updates are unavailable: the server does not answer."
    assert labels["unavailable"] == "Live updates are unavailable: the server did not send them."
    assert labels["stylesheet_missing"] == (
        "The progress bar cannot be drawn: its stylesheet did not load."
    )


def test_labels_follow_the_active_language(job: Job) -> None:
    running(job, 1, 4)
    with translation.override("fr"):
        html = render("{% django_sse_progress job cancel=True %}", job=job)
    assert ">En cours</span>" in html
    assert ">Annuler</button>" in html
    assert attribute(html, "aria-valuetext") == "1 sur 4 (25 %)"
    assert "Reconnexion…" in html
    assert connection_text(html).startswith("Mises à jour en direct indisponibles")
    raw = attribute(html, "data-django-sse-labels") or ""
    labels = json.loads(raw.replace("&quot;", '"'))
    assert labels["done"] == "Terminé"
    assert labels["stalled"].startswith("Mises à jour en direct indisponibles")
    job.succeed(None)
    job.refresh_from_db()
    with translation.override("de"):
        assert message_of(render("{% django_sse_progress job %}", job=job)) == "Fertig"


def test_anything_but_a_job_is_a_clear_error() -> None:
    with pytest.raises(TemplateSyntaxError, match="django_sse_progress needs a Job, not str"):
        render("{% django_sse_progress job %}", job="not a job")


def test_bar_alone() -> None:
    html = render("{% django_sse_bar 2 8 %}")
    assert attribute(html, "aria-valuenow") == "2"
    assert attribute(html, "aria-valuetext") == "2 of 8 (25%)"
    assert "data-django-sse-bind" not in html
    assert "aria-valuenow" not in render("{% django_sse_bar 0 None %}")
    assert "aria-valuenow" not in render('{% django_sse_bar "x" "y" %}')


def test_assets() -> None:
    html = render("{% django_sse_assets %}")
    # Marked, so that the script can tell when it did not load.
    assert (
        '<link rel="stylesheet" href="/static/django_sse/django_sse.css" '
        "data-django-sse-stylesheet>"
    ) in html
    assert '<script src="/static/django_sse/django_sse.js" defer></script>' in html
    # No request, no session: no sharing tag (the client then shares nothing).
    assert "django-sse-identity" not in html


def test_assets_tag_each_session_for_tab_sharing(rf: RequestFactory) -> None:
    def identity_of(session_key: str | None) -> str | None:
        request = rf.get("/")
        request.session = SessionStore(session_key)
        html = render("{% django_sse_assets %}", request=request)
        return attribute(html, "content")

    first, second = make_session(), make_session()
    assert identity_of(None) is None
    assert re.fullmatch(r"[0-9a-f]{32}", identity_of(first) or "")
    assert identity_of(first) == identity_of(first)
    assert identity_of(first) != identity_of(second)
    # An HMAC: the session key itself is not on the page.
    assert first not in (identity_of(first) or "")


def test_custom_event_types_for_the_client(job: Job) -> None:
    html = render('{% django_sse_progress job events="row_added,warning" %}', job=job)
    assert attribute(html, "data-django-sse-events") == "row_added,warning"
    assert "data-django-sse-events" not in render("{% django_sse_progress job %}", job=job)


def test_running_job_says_when_the_script_did_not_load(job: Job) -> None:
    running(job, 1, 4, "Step 1")
    html = render("{% django_sse_progress job %}", job=job)
    # Text in the HTML (no inline script, CSP-safe) that django_sse.js replaces when it binds.
    assert connection_text(html) == (
        "Live updates are unavailable: the page\u2019s script did not load. "
        "Reload the page to see the latest."
    )


def test_failed_job_says_why_in_its_message(job: Job) -> None:
    running(job, 2, 4, "Reading orders")
    job.fail("The <orders> table did not answer.")
    job.refresh_from_db()
    html = render("{% django_sse_progress job %}", job=job)
    assert ">Failed</span>" in html
    assert message_of(html) == "Failed: The &lt;orders&gt; table did not answer."
    # Said once: the error part stays for a failed cancel request.
    assert re.search(r'data-django-sse-bind="error" role="alert" hidden></p>', html)


def test_failed_job_without_an_error_says_failed(job: Job) -> None:
    running(job, 2, 4)
    job.fail("")
    job.refresh_from_db()
    assert message_of(render("{% django_sse_progress job %}", job=job)) == "Failed"


def test_pending_cancel_says_stopping_while_the_job_runs(job: Job) -> None:
    running(job, 1, 4, "Step 1")
    job.request_cancel()
    job.refresh_from_db()
    html = render("{% django_sse_progress job %}", job=job)
    assert message_of(html) == "Stopping…"
    # The script keeps "Stopping…" over later progress messages while this attribute is on.
    assert re.search(r"\sdata-django-sse-cancel-requested\s", html)


def test_cancel_ignored_by_the_task_ends_in_its_final_state(job: Job) -> None:
    running(job, 1, 4, "Step 1")
    job.request_cancel()
    # The task never checks job.cancel_requested(): it carries on and succeeds.
    job.set_progress(4, 4, "Step 4")
    job.succeed({"rows": 4})
    job.refresh_from_db()
    html = render("{% django_sse_progress job cancel=True %}", job=job)
    assert ">Succeeded</span>" in html
    assert message_of(html) == "Done"
    assert "data-django-sse-cancel-requested" not in html


def test_cancelled_job_says_cancelled(job: Job) -> None:
    running(job, 1, 4, "Step 1")
    job.request_cancel()
    job.cancel()
    job.refresh_from_db()
    html = render("{% django_sse_progress job %}", job=job)
    assert message_of(html) == "Cancelled"
    assert "data-django-sse-cancel-requested" not in html

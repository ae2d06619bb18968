"""``{% load django_sse %}``: a drop-in progress bar for a job, and the client's assets.

    {% load django_sse %}
    {% django_sse_assets %}                      {# once per page, in <head> #}
    {% django_sse_progress job %}                {# a bar, a status and a message #}
    {% django_sse_progress job cancel=True log=True label="Export" %}

The bar shows the job's current state as rendered (no script needed to see it), and
``django_sse.js`` keeps every bar of the page up to date through one connection. A finished
job's bar says how it ended ("Done", "Failed: ...", "Cancelled"), the same words the script
writes when the job ends while the page is open, so a reload shows what the page showed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django import template
from django.http import HttpRequest
from django.templatetags.static import static
from django.urls import reverse
from django.utils.crypto import salted_hmac
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext, pgettext

from django_sse.lifecycle import ACTIVE_STATUSES, FINISHED_STATUSES
from django_sse.models import Job

register = template.Library()

# The most log lines the tag renders; the newest are kept.
LOG_LINES_MAX = 500


def progress_text(current: int, total: int | None) -> str:
    """What a screen reader says of the bar ("8 of 20 (40%)"), or "" while indeterminate."""
    if not total:
        return ""
    return gettext("{current} of {total} ({percent}%)").format(
        current=current, total=total, percent=percent_of(current, total)
    )


def percent_of(current: int, total: int | None) -> int | None:
    if not total:
        return None
    return max(0, min(100, round(100 * current / total)))


def client_labels() -> dict[str, str]:
    """The words the browser client writes, in the active language."""
    labels = {str(value): str(label) for value, label in Job.Status.choices}
    labels.update(
        cancel_requested=gettext("Stopping…"),
        # The message once the job has ended ({error} is filled in by the script).
        done=gettext("Done"),
        failed_error=gettext("Failed: {error}"),
        # Only a lost connection is worth a word; the bar says the rest.
        connecting="",
        open="",
        closed="",
        reconnecting=gettext("Reconnecting…"),
        # The {placeholders} are filled in by the script.
        progress=gettext("{current} of {total} ({percent}%)"),
        cancel_failed=gettext("The job could not be cancelled. Try again."),
        stopped=gettext("Live updates stopped. Reload the page to see the latest."),
        # Not live (see django_sse.js): no answer within a few seconds, or an answer that is
        # not an event stream; the stylesheet did not load.
        stalled=gettext("Live updates are unavailable: the server does not answer."),
        unavailable=gettext("Live updates are unavailable: the server did not send them."),
        stylesheet_missing=gettext(
            "The progress bar cannot be drawn: its stylesheet did not load."
        ),
    )
    return labels


def cancel_pending(job: Job) -> bool:
    """A cancel was asked and the job still runs: the bar says "Stopping…"."""
    return job.cancel_requested_at is not None and job.status in ACTIVE_STATUSES


def status_message(job: Job) -> str:
    """The bar's message: how a finished job ended, "Stopping…" while a cancel is pending,
    else the last progress message. The script writes the same on the live events."""
    # Plain strings, as in lifecycle.FINISHED_STATUSES (django-stubs types the members as tuples).
    if job.status == "succeeded":
        return gettext("Done")
    if job.status == "failed" and job.error:
        return gettext("Failed: {error}").format(error=job.error)
    if job.status in FINISHED_STATUSES:
        return str(job.get_status_display())  # "Failed", "Cancelled"
    if cancel_pending(job):
        return gettext("Stopping…")
    return job.message


def _log_lines(job: Job) -> list[str]:
    rows = (
        job.events.filter(type="log", seq__lte=job.last_seq)
        .order_by("-seq")
        .values_list("data", flat=True)[:LOG_LINES_MAX]
    )
    lines = []
    for data in reversed(list(rows)):
        if isinstance(data, dict) and ("line" in data or "message" in data):
            lines.append(str(data.get("line", data.get("message"))))
        elif isinstance(data, str):
            lines.append(data)
        else:
            lines.append(json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return lines


@register.inclusion_tag("django_sse/progress.html", takes_context=True)
def django_sse_progress(
    context: template.Context,
    job: Job,
    *,
    cancel: bool = False,
    log: bool = False,
    label: str | None = None,
    events: str = "",
) -> dict[str, Any]:
    """An accessible progress bar for ``job``, kept live by ``django_sse.js``.

    ``cancel=True`` adds a Cancel button (POST to ``django_sse:job-cancel``), ``log=True`` the
    job's ``log`` events as a list, ``label`` a visible label (without it the job's name names
    the bar for screen readers only: the page around it usually shows the name already), and
    ``events`` names custom event types (comma-separated) that the page listens for (DOM
    events ``django-sse:<type>`` on the bar's element).
    """
    if not isinstance(job, Job):
        raise template.TemplateSyntaxError(
            f"django_sse_progress needs a Job, not {type(job).__name__}."
        )
    # Unique ids for aria-labelledby, even with the same job twice on a page.
    number = int(context.render_context.get("django_sse_progress") or 0) + 1
    context.render_context["django_sse_progress"] = number
    dom_id = f"django-sse-{job.pk.hex[:12]}-{number}"
    return {
        "job": job,
        "dom_id": dom_id,
        "label": label if label is not None else (job.name or pgettext("job name", "Job")),
        "label_shown": label is not None,
        "message": status_message(job),
        "stopping": cancel_pending(job),
        "events_url": reverse("django_sse:events"),
        "cancel_url": reverse("django_sse:job-cancel", kwargs={"job_id": job.pk}),
        "cancel": cancel,
        "log": log,
        "events": events,
        "log_lines": _log_lines(job) if log else [],
        "percent": percent_of(job.current, job.total),
        "valuetext": progress_text(job.current, job.total),
        "labels_json": json.dumps(client_labels(), ensure_ascii=False),
        # The client's resume point starts at this time (see django_sse/resume.py).
        "horizon": int(time.time()),
    }


@register.inclusion_tag("django_sse/bar.html")
def django_sse_bar(current: Any, total: Any, label_id: str = "") -> dict[str, Any]:
    """The bar alone, for a fragment (``django_sse/htmx/progress.html`` uses it)."""
    try:
        current_value = int(current or 0)
        total_value = int(total) if total else None
    except (TypeError, ValueError):
        current_value, total_value = 0, None
    return {
        "current": current_value,
        "total": total_value,
        "percent": percent_of(current_value, total_value),
        "valuetext": progress_text(current_value, total_value),
        "label_id": label_id,
        "bind": False,
    }


def sharing_identity(request: HttpRequest | None) -> str:
    """A tag naming the visitor's session, for the client's tab sharing: tabs share a
    connection only if their pages carry the same tag, so a tab rendered before a log-out or a
    log-in as someone else never receives the events of the other session. An HMAC, so the
    page does not show the session key; "" (no sharing) without a session."""
    session = getattr(request, "session", None)
    session_key = getattr(session, "session_key", None)
    if not session_key:
        return ""
    return salted_hmac("django_sse.sharing", session_key, algorithm="sha256").hexdigest()[:32]


@register.simple_tag(takes_context=True)
def django_sse_assets(context: template.Context) -> SafeString:
    """The client script and its stylesheet (``defer``: it binds once the page is parsed),
    and the session's sharing tag (see ``sharing_identity``). The script checks that the
    stylesheet marked ``data-django-sse-stylesheet`` loaded, and says so on the bars if not."""
    identity = sharing_identity(context.get("request"))
    meta = (
        format_html('<meta name="django-sse-identity" content="{}">\n', identity)
        if identity
        else ""
    )
    return format_html(
        '{}<link rel="stylesheet" href="{}" data-django-sse-stylesheet>\n'
        '<script src="{}" defer></script>',
        meta,
        static("django_sse/django_sse.css"),
        static("django_sse/django_sse.js"),
    )

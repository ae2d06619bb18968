"""Checks of the ``DJANGO_SSE`` setting itself: each key known, each value of its type and
range, and what a value needs installed (``METRICS``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import import_module
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.utils.module_loading import import_string

from django_sse.conf import DEFAULTS

_ORIGIN_RE = re.compile(r"\Ahttps?://[^/\s?#]+\Z")


_NUMBERS = {
    "HEARTBEAT_SECONDS": (float, int),
    "POLL_SECONDS": (float, int),
    "PROGRESS_INTERVAL_SECONDS": (float, int),
    "CANCEL_CHECK_SECONDS": (float, int),
    "RETENTION_DAYS": (float, int),
    "RETRY_MILLISECONDS": (int,),
    "MAX_DATA_BYTES": (int,),
    "MAX_BATCH_EVENTS": (int,),
    "REPLAY_PAGE_SIZE": (int,),
    "MAX_BUFFERED_BYTES": (int,),
    "SEND_TIMEOUT_SECONDS": (float, int),
    "MAX_STREAMS_PER_IDENTITY": (int,),
    "RESUME_MAX_AGE_SECONDS": (float, int),
}


_BOOLEANS = ("METRICS",)


@register(Tags.compatibility)
def check_settings(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    value = getattr(settings, "DJANGO_SSE", {})
    if not isinstance(value, dict):
        return [
            Error(
                f"DJANGO_SSE must be a dict, not {type(value).__name__}.",
                hint="Set DJANGO_SSE = {...} with the keys listed in django_sse's README.",
                id="django_sse.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for key in sorted(set(value) - set(DEFAULTS)):
        errors.append(
            Error(
                f"DJANGO_SSE has an unknown key {key!r}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id="django_sse.E001",
            )
        )
    for key, types in _NUMBERS.items():
        if key not in value:
            continue
        item = value[key]
        if isinstance(item, bool) or not isinstance(item, types) or item <= 0:
            errors.append(
                Error(
                    f"DJANGO_SSE[{key!r}] must be a positive number, not {item!r}.",
                    hint=f"Defaults to {DEFAULTS[key]!r}.",
                    id="django_sse.E001",
                )
            )
    for key in _BOOLEANS:
        if key in value and not isinstance(value[key], bool):
            errors.append(
                Error(
                    f"DJANGO_SSE[{key!r}] must be True or False, not {value[key]!r}.",
                    hint=f"Defaults to {DEFAULTS[key]!r}.",
                    id="django_sse.E001",
                )
            )
    for key in ("CHANNEL_LAYER", "GROUP_PREFIX"):
        if key in value and (not isinstance(value[key], str) or not value[key]):
            errors.append(
                Error(
                    f"DJANGO_SSE[{key!r}] must be a non-empty string, not {value[key]!r}.",
                    hint=f"Defaults to {DEFAULTS[key]!r}.",
                    id="django_sse.E001",
                )
            )
    origins = value.get("CORS_ALLOWED_ORIGINS", [])
    if not isinstance(origins, (list, tuple, set, frozenset)) or not all(
        isinstance(o, str) and _ORIGIN_RE.match(o) for o in origins
    ):
        errors.append(
            Error(
                f"DJANGO_SSE['CORS_ALLOWED_ORIGINS'] must be a list of origins such as "
                f"'https://app.example.com', not {origins!r}.",
                hint="An origin is a scheme, a host and an optional port, with no path.",
                id="django_sse.E001",
            )
        )
    authorize = value.get("AUTHORIZE")
    if authorize is not None:
        try:
            func = import_string(authorize) if isinstance(authorize, str) else authorize
        except ImportError as exc:
            func = None
            reason = str(exc)
        else:
            reason = "it is not callable"
        if not callable(func):
            errors.append(
                Error(
                    f"DJANGO_SSE['AUTHORIZE'] cannot be used: {reason}.",
                    hint="Give a callable (request, job) -> bool, or its dotted path.",
                    id="django_sse.E002",
                )
            )
    return errors


@register(Tags.compatibility)
def check_db_threads(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """``DB_THREADS``: None (sized by the database) or a whole number of threads, at least one
    (each holds a database connection in every server process)."""
    value = getattr(settings, "DJANGO_SSE", {})
    if not isinstance(value, dict) or value.get("DB_THREADS") is None:
        return []
    threads = value["DB_THREADS"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        return [
            Error(
                f"DJANGO_SSE['DB_THREADS'] must be a whole number of threads (1 or more) or "
                f"None, not {threads!r}.",
                hint="None runs one thread on SQLite and four on other databases; each thread "
                "holds one database connection per server process.",
                id="django_sse.E007",
            )
        ]
    return []


@register(Tags.compatibility)
def check_metrics(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """Metrics asked for and prometheus_client missing: nothing would be exported (imported
    only when the setting is on, see metrics.py)."""
    value = getattr(settings, "DJANGO_SSE", {})
    if not isinstance(value, dict) or value.get("METRICS") is not True:
        return []
    try:
        import_module("prometheus_client")
    except ImportError as exc:
        return [
            Error(
                f"DJANGO_SSE['METRICS'] is on, but prometheus_client cannot be imported ({exc}).",
                hint="Install django-sse-jobs[metrics] (prometheus_client 0.20 or later), or "
                "set DJANGO_SSE['METRICS'] to False.",
                id="django_sse.E006",
            )
        ]
    return []

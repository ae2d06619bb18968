"""Settings for the servers and helper processes of ``test_abuse.py``.

``tests.live.e2e_settings`` (shared database, channel-layer prefix, the ``django_sse`` log on
stderr) plus what one abuse test needs of its server, from the environment:

``DJANGO_SSE_ABUSE_SETTINGS``
    A JSON object merged into ``DJANGO_SSE`` (say ``{"HEARTBEAT_SECONDS": 1}``). Keys the
    installed ``django_sse`` does not know are simply never read.
``DJANGO_SSE_ABUSE_NO_CSRF_MIDDLEWARE=1``
    ``CsrfViewMiddleware`` removed from ``MIDDLEWARE`` (a view must protect itself).
``DJANGO_SSE_ABUSE_COUNT_QUERIES=1``
    Every ``SELECT`` that reads the ``django_sse_job`` table logs one line
    ``abuse-probe job-select t=<unix time>`` (logger ``tests.abuse_probe``, on stderr): a count
    of the queries the server makes, independent of the app's own code.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from django.db.backends.signals import connection_created

from tests.live.e2e_settings import *  # noqa: F403
from tests.live.e2e_settings import DJANGO_SSE as _E2E_SSE
from tests.live.e2e_settings import LOGGING, MIDDLEWARE

DJANGO_SSE = {**_E2E_SSE, **json.loads(os.environ.get("DJANGO_SSE_ABUSE_SETTINGS") or "{}")}

if os.environ.get("DJANGO_SSE_ABUSE_NO_CSRF_MIDDLEWARE") == "1":
    MIDDLEWARE = [m for m in MIDDLEWARE if m != "django.middleware.csrf.CsrfViewMiddleware"]

_loggers = cast("dict[str, Any]", LOGGING["loggers"])
_loggers["tests.abuse_probe"] = {
    "handlers": ["stderr"],
    "level": "INFO",
    "propagate": False,
}

# Which django_sse the process runs (a copy of the tree must run its own), once on stderr.
_spec = importlib.util.find_spec("django_sse")
print(f"abuse-settings: django_sse at {_spec.origin if _spec else None}", file=sys.stderr)

# ``django_sse_job`` as a whole name: not ``django_sse_jobevent``.
_JOB_TABLE = re.compile(r"\bdjango_sse_job\b")
_probe = logging.getLogger("tests.abuse_probe")


def _count_job_selects(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
) -> Any:
    text = str(sql)
    if text.lstrip()[:6].upper() == "SELECT" and _JOB_TABLE.search(text):
        _probe.info("abuse-probe job-select t=%.3f", time.time())
    return execute(sql, params, many, context)


def _install_probe(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _count_job_selects not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count_job_selects)


if os.environ.get("DJANGO_SSE_ABUSE_COUNT_QUERIES") == "1":
    connection_created.connect(_install_probe, weak=False, dispatch_uid="tests.abuse_probe")

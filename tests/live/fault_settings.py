"""Settings for the servers of ``test_faults.py``: ``tests.live.e2e_settings`` plus a replay page
size taken from the environment (``DJANGO_SSE_E2E_REPLAY_PAGE_SIZE``), so that a replay of a long
history takes many queries, and a short connect timeout for an unreachable database."""

from __future__ import annotations

import os
from typing import Any

from tests.live.e2e_settings import *  # noqa: F403
from tests.live.e2e_settings import DATABASES
from tests.live.e2e_settings import DJANGO_SSE as _E2E_SSE

DJANGO_SSE = {
    **_E2E_SSE,
    "REPLAY_PAGE_SIZE": int(os.environ.get("DJANGO_SSE_E2E_REPLAY_PAGE_SIZE", "500")),
}

_default: dict[str, Any] = DATABASES["default"]
_default["OPTIONS"] = {**(_default.get("OPTIONS") or {}), "connect_timeout": 5}

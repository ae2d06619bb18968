"""Settings for the servers and helper processes of ``test_network.py``.

``tests.live.e2e_settings`` (a SQLite file shared by the processes, ``DJANGO_SSE_E2E_DB``; the
``django_sse`` log on stderr) with the in-memory channel layer whatever ``REDIS_URL`` says (a
server inside its network namespace reaches no Redis: events from another process come through
the database poll), and ``MAX_BUFFERED_BYTES`` from ``DJANGO_SSE_E2E_MAX_BUFFERED_BYTES``.
"""

from __future__ import annotations

import os
from typing import Any

from tests.live.e2e_settings import *  # noqa: F403
from tests.live.e2e_settings import DATABASES
from tests.live.e2e_settings import DJANGO_SSE as _E2E_SSE

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

DJANGO_SSE = {
    **_E2E_SSE,
    "MAX_BUFFERED_BYTES": int(os.environ.get("DJANGO_SSE_E2E_MAX_BUFFERED_BYTES", "1048576")),
}

_default: dict[str, Any] = DATABASES["default"]
if _default["ENGINE"].endswith("sqlite3"):
    # SQLite's page cache is 2 MB per connection by default: kept small, so that the server's
    # memory measures what a stream holds rather than how much of the file was read.
    _default["OPTIONS"] = {
        **(_default.get("OPTIONS") or {}),
        "init_command": "PRAGMA cache_size=-256",
    }

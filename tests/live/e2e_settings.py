"""Settings for the Daphne server and the helper processes of ``test_e2e_daphne.py``.

Everything comes from ``tests.settings`` except what several processes must share: the
database (``DJANGO_SSE_E2E_DB``: a SQLite file path, or a PostgreSQL database name when
``DATABASE_URL`` is set) and the Redis channel-layer prefix (``DJANGO_SSE_E2E_PREFIX``; the
test settings use a per-process prefix, which would keep a publisher process and the server
apart). The ``django_sse`` logger prints INFO to stderr so the tests can read the stream log.
"""

from __future__ import annotations

import os
from typing import Any

from tests.settings import *  # noqa: F403
from tests.settings import CHANNEL_LAYERS, DATABASES
from tests.settings import DJANGO_SSE as _BASE_SSE

_db = os.environ.get("DJANGO_SSE_E2E_DB", "")
if not _db:
    raise RuntimeError(
        "tests.live.e2e_settings needs DJANGO_SSE_E2E_DB (set by test_e2e_daphne.py)."
    )

DATABASES["default"]["NAME"] = _db
DATABASES["default"].pop("TEST", None)

_layer_config: Any = CHANNEL_LAYERS["default"].get("CONFIG")
if _layer_config is not None:
    _layer_config["prefix"] = os.environ.get("DJANGO_SSE_E2E_PREFIX", "django_sse_e2e")

DJANGO_SSE = {
    **_BASE_SSE,
    "POLL_SECONDS": float(os.environ.get("DJANGO_SSE_E2E_POLL_SECONDS", "0.2")),
    "HEARTBEAT_SECONDS": float(os.environ.get("DJANGO_SSE_E2E_HEARTBEAT_SECONDS", "15")),
    # Tests of many idle streams open them all as one user.
    "MAX_STREAMS_PER_IDENTITY": 100,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "plain",
        }
    },
    "loggers": {"django_sse": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}

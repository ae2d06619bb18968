"""Settings for the servers and helper processes of ``test_pg_layer.py``:
``tests.live.e2e_settings`` on PostgreSQL, with channels_postgres (LISTEN/NOTIFY) as the channel
layer instead of Redis.

The layer reads the database named in its ``CONFIG`` (here the site's own database, so that
``migrate`` creates its two tables and its NOTIFY trigger there), and it also needs a database
alias named ``channels_postgres``: its ``group_discard`` deletes through the ORM on that alias.
``DJANGO_SSE_PG_LAYER_APP`` names the layer's connections (``application_name``) so a test can
count them in ``pg_stat_activity``.
"""

from __future__ import annotations

import os
from typing import Any

from tests.live.e2e_settings import *  # noqa: F403
from tests.live.e2e_settings import DATABASES, INSTALLED_APPS

_default: dict[str, Any] = DATABASES["default"]
if _default["ENGINE"] != "django.db.backends.postgresql":
    raise RuntimeError("tests.live.pg_layer_settings needs DATABASE_URL=postgres://...")

INSTALLED_APPS = [*INSTALLED_APPS, "channels_postgres"]

DATABASES["channels_postgres"] = {**_default}

_layer_config: dict[str, Any] = {
    **{k: v for k, v in _default.items() if k != "TEST"},
    # The layer builds a Django DatabaseWrapper from CONFIG, which reads TIME_ZONE
    # (Django fills it in DATABASES, not here): without it the layer cannot be made,
    # and channels' get_channel_layer() returns None without a word.
    "TIME_ZONE": None,
    "OPTIONS": {
        "application_name": os.environ.get("DJANGO_SSE_PG_LAYER_APP", "django_sse_pglayer")
    },
}
CHANNEL_LAYERS = {
    "default": {"BACKEND": "channels_postgres.core.PostgresChannelLayer", "CONFIG": _layer_config}
}

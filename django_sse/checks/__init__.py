"""System checks, registered in ``DjangoSseConfig.ready()`` by importing this package; every ID
is documented in ``docs/checks.rst``.

- ``settings.py``: the ``DJANGO_SSE`` setting itself (E001, E002, E006);
- ``layers.py``: the channel layer (W001, W005, W006, W009);
- ``deployment.py``: middleware, sessions, Daphne, the task backend, static files (E003, E004,
  E005, W002, W003, W004, W007, W008).
"""

from __future__ import annotations

from django_sse.checks.deployment import (
    check_daphne,
    check_middleware,
    check_session_engine,
    check_static_assets,
    check_task_backend,
)
from django_sse.checks.layers import check_buffer_size, check_channel_layer, check_redis_timeout
from django_sse.checks.settings import check_metrics, check_settings

__all__ = [
    "check_buffer_size",
    "check_channel_layer",
    "check_daphne",
    "check_metrics",
    "check_middleware",
    "check_redis_timeout",
    "check_session_engine",
    "check_settings",
    "check_static_assets",
    "check_task_backend",
]

"""Settings for django_sse, read from the ``DJANGO_SSE`` dict.

Every default is written once, in ``DEFAULTS``. The dict is cached and the cache is cleared on
``setting_changed``, so ``override_settings(DJANGO_SSE={...})`` just works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from django.http import HttpRequest

    from django_sse.models import Job

    AuthorizeCallable = Callable[[HttpRequest, Job], bool]

DEFAULTS: dict[str, Any] = {
    # Seconds between two ": ping" comment lines on an idle stream. Also the deadline of a
    # stream's authorization: no chunk leaves for the client unless the session was checked
    # within this time, and a connection whose data stays unacknowledged this long is dropped
    # by the kernel (TCP_USER_TIMEOUT, where the server lets us set it).
    "HEARTBEAT_SECONDS": 15.0,
    # The reconnection delay sent to EventSource in the "retry:" field, in milliseconds.
    "RETRY_MILLISECONDS": 3000,
    # Seconds between two database checks for events the channel layer did not bring (an event
    # published from another process on the in-memory layer, a dropped layer message).
    "POLL_SECONDS": 1.0,
    # Largest accepted event payload, counted in bytes of encoded JSON.
    "MAX_DATA_BYTES": 64 * 1024,
    # Most events one publish_many() call records (one transaction, one range of seq numbers).
    "MAX_BATCH_EVENTS": 1000,
    # Progress updates of one job closer together than this are coalesced (in seconds).
    "PROGRESS_INTERVAL_SECONDS": 0.25,
    # A task's cancel_requested() reads the database at most this often per job (seconds).
    "CANCEL_CHECK_SECONDS": 1.0,
    # Default age of finished jobs that "manage.py django_sse_prune" deletes, in days.
    "RETENTION_DAYS": 30,
    # Events read from the database per query when a stream replays history (a stream holds
    # two pages at most: the one it sends and the next, read meanwhile). A page also stops at a
    # quarter of MAX_BUFFERED_BYTES.
    "REPLAY_PAGE_SIZE": 1000,
    # Most bytes one stream keeps queued ahead of its client, beyond the kernel's socket
    # buffers: its replay pages, its inbox of live events and what the server holds for it.
    "MAX_BUFFERED_BYTES": 1024 * 1024,
    # Seconds a stream waits for the server to take a chunk (a client that does not read)
    # before it ends the stream; the browser then resumes from its last id.
    "SEND_TIMEOUT_SECONDS": 30.0,
    # Open streams per user, or per anonymous session, in one process; more are refused (429).
    "MAX_STREAMS_PER_IDENTITY": 20,
    # A resume point of the all-jobs stream older than this (in seconds) counts as a first
    # connection: the visitor's running jobs are sent, not everything since then.
    "RESUME_MAX_AGE_SECONDS": 24 * 3600.0,
    # Optional callable (or dotted path to one) "(request, job) -> bool" that grants access to
    # a job's stream beyond its owner, e.g. to staff.
    "AUTHORIZE": None,
    # The alias in CHANNEL_LAYERS that carries events between processes.
    "CHANNEL_LAYER": "default",
    # Prefix of the channel-layer group names, one group per job.
    "GROUP_PREFIX": "django_sse",
    # Origins ("https://app.example.com") of other sites' pages allowed to read streams with
    # the visitor's cookies (CORS). Empty: only pages of this site can.
    "CORS_ALLOWED_ORIGINS": [],
    # Export Prometheus metrics (needs the "metrics" extra: prometheus_client), see metrics.py.
    "METRICS": False,
}

# Admission (a separate block, see docs/settings.rst).
DEFAULTS.update(
    {
        # Threads (each with its own database connection) running the streams' queries in
        # each server process. None: one on SQLite, four on other databases (database.py).
        "DB_THREADS": None,
    }
)


class Settings:
    """Typed view of ``settings.DJANGO_SSE``.

    The dict is looked up once and kept until Django's ``setting_changed`` signal says it
    changed (``override_settings`` sends it), because a tight ``set_progress`` loop reads a
    setting on every call.
    """

    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None

    def clear(self) -> None:
        self._cache = None

    def _raw(self) -> dict[str, Any]:
        cache = self._cache
        if cache is None:
            value = getattr(settings, "DJANGO_SSE", {})
            cache = self._cache = value if isinstance(value, dict) else {}
        return cache

    def _get(self, name: str) -> Any:
        return self._raw().get(name, DEFAULTS[name])

    @property
    def HEARTBEAT_SECONDS(self) -> float:
        return float(self._get("HEARTBEAT_SECONDS"))

    @property
    def RETRY_MILLISECONDS(self) -> int:
        return int(self._get("RETRY_MILLISECONDS"))

    @property
    def POLL_SECONDS(self) -> float:
        return float(self._get("POLL_SECONDS"))

    @property
    def MAX_DATA_BYTES(self) -> int:
        return int(self._get("MAX_DATA_BYTES"))

    @property
    def MAX_BATCH_EVENTS(self) -> int:
        return int(self._get("MAX_BATCH_EVENTS"))

    @property
    def PROGRESS_INTERVAL_SECONDS(self) -> float:
        return float(self._get("PROGRESS_INTERVAL_SECONDS"))

    @property
    def CANCEL_CHECK_SECONDS(self) -> float:
        return float(self._get("CANCEL_CHECK_SECONDS"))

    @property
    def RETENTION_DAYS(self) -> float:
        return float(self._get("RETENTION_DAYS"))

    @property
    def REPLAY_PAGE_SIZE(self) -> int:
        return int(self._get("REPLAY_PAGE_SIZE"))

    @property
    def MAX_BUFFERED_BYTES(self) -> int:
        return int(self._get("MAX_BUFFERED_BYTES"))

    @property
    def SEND_TIMEOUT_SECONDS(self) -> float:
        return float(self._get("SEND_TIMEOUT_SECONDS"))

    @property
    def MAX_STREAMS_PER_IDENTITY(self) -> int:
        return int(self._get("MAX_STREAMS_PER_IDENTITY"))

    @property
    def RESUME_MAX_AGE_SECONDS(self) -> float:
        return float(self._get("RESUME_MAX_AGE_SECONDS"))

    @property
    def AUTHORIZE(self) -> AuthorizeCallable | None:
        value = self._get("AUTHORIZE")
        if isinstance(value, str):
            value = import_string(value)
        return cast("AuthorizeCallable | None", value)

    @property
    def CHANNEL_LAYER(self) -> str:
        return str(self._get("CHANNEL_LAYER"))

    @property
    def GROUP_PREFIX(self) -> str:
        return str(self._get("GROUP_PREFIX"))

    @property
    def CORS_ALLOWED_ORIGINS(self) -> frozenset[str]:
        return frozenset(self._get("CORS_ALLOWED_ORIGINS"))

    @property
    def METRICS(self) -> bool:
        return self._get("METRICS") is True

    @property
    def DB_THREADS(self) -> int | None:
        value = self._get("DB_THREADS")
        return None if value is None else int(value)


conf = Settings()


def clear_cache(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver, connected in ``DjangoSseConfig.ready()``."""
    if setting == "DJANGO_SSE":
        conf.clear()

"""Prometheus metrics, exported when ``DJANGO_SSE["METRICS"]`` is on and ``prometheus_client``
is installed (``pip install django-sse-jobs[metrics]``); every name is listed in
``docs/metrics.rst``.

The streams, the views, the hub and ``publish`` call the functions below, one call per place.
They start as stubs: the first call of any of them binds them all, to recorders of real metrics
when metrics are on and ``prometheus_client`` imports, else to functions that do nothing. So
with metrics off ``prometheus_client`` is never imported and a call costs one call of an empty
function (``counted`` hands its generator back untouched). A change of ``DJANGO_SSE`` (Django's
``setting_changed``, see ``clear_on_setting_changed``) unbinds them: the next call looks at the
setting again.

The metrics are created once per registry (prometheus_client's default one unless ``bind`` is
given another, as the tests do), so django-prometheus's ``/metrics`` and prometheus_client's own
views export them, and in prometheus_client's multi-process mode the gauge sums live processes.
Label values are fixed strings of ours (a stream kind, a reason), never request data.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from django_sse.conf import conf

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram

__all__ = [
    "bind",
    "clear_on_setting_changed",
    "counted",
    "gap_filled",
    "layer_receive_failed",
    "stream_closed",
    "stream_opened",
    "stream_refused",
    "timed_publish",
    "unbind",
]

logger = logging.getLogger("django_sse")

# Publish durations are milliseconds on a healthy database; the top buckets catch lock waits.
PUBLISH_BUCKETS_SECONDS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

_F = TypeVar("_F", bound=Callable[..., Any])


class CountedStream(Protocol):
    """What ``counted`` reads of a stream (``streaming.EventStream``)."""

    @property
    def metric_kind(self) -> str: ...

    @property
    def sent(self) -> int: ...


class _Metrics:
    """The metrics of one registry, and the functions that record them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.open = Gauge(
            "django_sse_streams_open",
            "Streams open now, by kind (job, html, session).",
            ["kind"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.closed = Counter(
            "django_sse_streams_closed",
            "Streams closed, by kind and by the reason their log line gives.",
            ["kind", "reason"],
            registry=registry,
        )
        self.refused = Counter(
            "django_sse_streams_refused",
            "Stream requests answered without a stream, by reason.",
            ["reason"],
            registry=registry,
        )
        self.delivered = Counter(
            "django_sse_events_delivered",
            "Events sent to clients (live and replayed), by stream kind.",
            ["kind"],
            registry=registry,
        )
        self.replayed = Counter(
            "django_sse_events_replayed",
            "Events read from the database when a stream opened (history, or since its resume "
            "point), by stream kind.",
            ["kind"],
            registry=registry,
        )
        self.gaps = Counter(
            "django_sse_gap_filled_events",
            "Events the hub read from the database because no channel-layer message brought "
            "them (a dropped message, or another process on the in-memory layer).",
            registry=registry,
        )
        self.layer_failures = Counter(
            "django_sse_layer_receive_failures",
            "Failed receive() calls on the channel layer.",
            registry=registry,
        )
        self.publish: Histogram = Histogram(
            "django_sse_publish_duration_seconds",
            "Time to record events of a job in the database (publish, set_progress, the "
            "lifecycle helpers), in seconds.",
            registry=registry,
            buckets=PUBLISH_BUCKETS_SECONDS,
        )

    def stream_opened(self, kind: str) -> None:
        self.open.labels(kind).inc()

    def stream_closed(self, kind: str, reason: str) -> None:
        self.open.labels(kind).dec()
        self.closed.labels(kind, reason).inc()

    def stream_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def gap_filled(self, count: int) -> None:
        self.gaps.inc(count)

    def layer_receive_failed(self) -> None:
        self.layer_failures.inc()

    def counted(
        self, stream: CountedStream, chunks: AsyncGenerator[bytes, None], replay: bool = False
    ) -> AsyncGenerator[bytes, None]:
        return self._count(stream, chunks, replay)

    async def _count(
        self, stream: CountedStream, chunks: AsyncGenerator[bytes, None], replay: bool
    ) -> AsyncGenerator[bytes, None]:
        # The stream counts what it sends in ``sent``, including the events the hub wrote
        # directly while the stream's task waited: they are counted when that task next
        # passes a chunk (a heartbeat at the latest) or closes.
        kind = stream.metric_kind
        delivered = self.delivered.labels(kind)
        replayed = self.replayed.labels(kind) if replay else None
        counted = stream.sent

        def count() -> None:
            nonlocal counted
            new = stream.sent
            if new > counted:
                delivered.inc(new - counted)
                if replayed is not None:
                    replayed.inc(new - counted)
                counted = new

        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    count()
                    yield chunk
        finally:
            count()


def _nothing(*args: Any, **kwargs: Any) -> None:
    """What every recorder does with metrics off."""


def _uncounted(
    stream: CountedStream, chunks: AsyncGenerator[bytes, None], replay: bool = False
) -> AsyncGenerator[bytes, None]:
    return chunks


def _stub(name: str) -> Callable[..., Any]:
    def first_call(*args: Any, **kwargs: Any) -> Any:
        bind()
        return globals()[name](*args, **kwargs)

    first_call.__name__ = name
    return first_call


# The recorders (rebound by bind() and unbind()).
stream_opened: Callable[[str], None]
stream_closed: Callable[[str, str], None]
stream_refused: Callable[[str], None]
gap_filled: Callable[[int], None]
layer_receive_failed: Callable[[], None]
counted: Callable[..., AsyncGenerator[bytes, None]]

_RECORDERS = (
    "stream_opened",
    "stream_closed",
    "stream_refused",
    "gap_filled",
    "layer_receive_failed",
    "counted",
)
_bound = False
_publish_histogram: Histogram | None = None
_lock = threading.Lock()
# One set of metrics per registry: prometheus_client refuses a name registered twice.
_by_registry: dict[int, tuple[CollectorRegistry, _Metrics]] = {}
_missing_logged = False


def unbind() -> None:
    """Back to the stubs: the next call reads the setting again."""
    global _bound, _publish_histogram
    with _lock:
        for name in _RECORDERS:
            globals()[name] = _stub(name)
        _publish_histogram = None
        _bound = False


def clear_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver, connected in ``DjangoSseConfig.ready()``: a change of
    ``DJANGO_SSE`` unbinds the recorders."""
    if setting == "DJANGO_SSE":
        unbind()


def bind(registry: CollectorRegistry | None = None) -> None:
    """Bind the recorders: to metrics in ``registry`` (prometheus_client's default one if
    None) when ``DJANGO_SSE["METRICS"]`` is on and prometheus_client imports, else to
    functions that do nothing."""
    global _bound, _publish_histogram, _missing_logged
    with _lock:
        found = _metrics(registry) if conf.METRICS else None
        if found is None:
            if conf.METRICS and not _missing_logged:
                _missing_logged = True
                logger.error(
                    "DJANGO_SSE['METRICS'] is on but prometheus_client cannot be imported "
                    "(django_sse.E006): no metrics are exported."
                )
            for name in _RECORDERS:
                globals()[name] = _nothing
            globals()["counted"] = _uncounted
            _publish_histogram = None
        else:
            for name in _RECORDERS:
                globals()[name] = getattr(found, name)
            _publish_histogram = found.publish
        _bound = True


def _metrics(registry: CollectorRegistry | None) -> _Metrics | None:
    try:
        import prometheus_client
    except ImportError:
        return None
    if registry is None:
        registry = prometheus_client.REGISTRY
    entry = _by_registry.get(id(registry))
    if entry is None or entry[0] is not registry:
        entry = _by_registry[id(registry)] = (registry, _Metrics(registry))
    return entry[1]


def timed_publish(func: _F) -> _F:
    """Decorate the function that records events: its duration goes to the publish
    histogram (failures included), when metrics are on."""

    @functools.wraps(func)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if not _bound:
            bind()
        histogram = _publish_histogram
        if histogram is None:
            return func(*args, **kwargs)
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            histogram.observe(time.perf_counter() - started)

    return cast(_F, timed)


unbind()

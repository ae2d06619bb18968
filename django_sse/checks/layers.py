"""Checks of the channel layer the streams listen on: configured, buildable, and set up so that a
stream's wait for events and a burst of them fit the layer (Redis timeouts, channel capacity)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from channels.layers import channel_layers
from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register

from django_sse.conf import conf


@register(Tags.compatibility)
def check_channel_layer(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    if conf.CHANNEL_LAYER not in layers:
        return [
            Warning(
                f"No channel layer {conf.CHANNEL_LAYER!r} is configured in CHANNEL_LAYERS.",
                hint=(
                    "Streams then learn of new events only by polling the database every "
                    "POLL_SECONDS. Add CHANNEL_LAYERS = {'default': {'BACKEND': "
                    "'channels.layers.InMemoryChannelLayer'}} for one process, or "
                    "channels_redis for several."
                ),
                id="django_sse.W001",
            )
        ]
    # Channels' get_channel_layer() answers None, silently, when the layer's class raises while
    # it is built (a missing key in its CONFIG, say): streams would then poll without a word.
    try:
        channel_layers.make_backend(conf.CHANNEL_LAYER)
    except Exception as exc:
        return [
            Warning(
                f"The channel layer {conf.CHANNEL_LAYER!r} cannot be built: {exc!r}.",
                hint=(
                    "Channels then gives no layer at all, and streams learn of new events only "
                    "by polling the database every POLL_SECONDS. Fix the layer's BACKEND or "
                    "CONFIG in CHANNEL_LAYERS."
                ),
                id="django_sse.W009",
            )
        ]
    return []


@register(Tags.compatibility)
def check_redis_timeout(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """redis-py 8 gives sockets a 5 s timeout, the core Redis layer blocks 5 s in receive():
    an idle receive then fails every 5 s (channels_redis issue 422)."""
    layer = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get(conf.CHANNEL_LAYER) or {}
    if layer.get("BACKEND") != "channels_redis.core.RedisChannelLayer":
        return []
    try:
        import redis
    except ImportError:
        return []
    if int(redis.__version__.split(".")[0]) < 8:
        return []
    hosts = (layer.get("CONFIG") or {}).get("hosts") or ["redis://localhost:6379"]
    if all(
        isinstance(h, dict) and "socket_timeout" in h and h["socket_timeout"] is None for h in hosts
    ):
        return []
    return [
        Warning(
            f"The Redis channel layer {conf.CHANNEL_LAYER!r} runs on redis-py "
            f"{redis.__version__}, whose 5 s socket timeout makes idle receive() calls fail.",
            hint=(
                'Give every host as a dict with "socket_timeout": None, e.g. '
                '{"address": "redis://127.0.0.1:6379/0", "socket_timeout": None}.'
            ),
            id="django_sse.W005",
        )
    ]


@register(Tags.compatibility)
def check_buffer_size(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """A stream's inbox and replay pages hold a quarter of MAX_BUFFERED_BYTES each: an event
    larger than that never waits in an inbox (it is read back from the database every time)."""
    try:
        quarter, largest = conf.MAX_BUFFERED_BYTES // 4, conf.MAX_DATA_BYTES
    except (TypeError, ValueError):
        return []  # E001 says what is wrong with the values
    if quarter >= largest:
        return []
    return [
        Warning(
            f"DJANGO_SSE['MAX_BUFFERED_BYTES'] ({conf.MAX_BUFFERED_BYTES}) is less than 4 times "
            f"DJANGO_SSE['MAX_DATA_BYTES'] ({largest}): a stream's inbox cannot hold one of the "
            f"largest events, which are read back from the database for every stream.",
            hint=f"Set MAX_BUFFERED_BYTES to {4 * largest} or more, or lower MAX_DATA_BYTES.",
            id="django_sse.W006",
        )
    ]

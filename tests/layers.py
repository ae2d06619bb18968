"""Looking inside channel layers, for tests of group membership."""

from __future__ import annotations

from typing import Any

from channels.layers import InMemoryChannelLayer


async def group_size(layer: Any, group: str) -> int:
    """How many channels are in ``group`` on this layer."""
    if isinstance(layer, InMemoryChannelLayer):
        return len(layer.groups.get(group, {}))
    name = type(layer).__name__
    if name == "RedisChannelLayer":
        connection = layer.connection(layer.consistent_hash(group))
        return int(await connection.zcard(layer._group_key(group)))
    if name == "RedisPubSubChannelLayer":
        loop_layer = layer._get_layer()
        return len(loop_layer.groups.get(loop_layer._get_group_channel_name(group), ()))
    raise NotImplementedError(name)

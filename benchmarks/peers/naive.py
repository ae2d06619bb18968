"""The naive Django build: an async view, one channel-layer channel per connection
(``new_channel``, ``group_add``, loop on ``receive``, ``group_discard`` in ``finally``), under
Daphne with the Redis pub/sub layer. Session-authorized like ours. No persistence, no replay."""

from __future__ import annotations

from collections.abc import AsyncIterator

from channels.layers import get_channel_layer
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse


async def events(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponse(status=403)
    group = "bench_" + request.GET.get("topic", "default")
    layer = get_channel_layer()

    async def stream() -> AsyncIterator[bytes]:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        try:
            yield b"retry: 3000\n\n"
            while True:
                message = await layer.receive(channel)
                yield b"event: bench\ndata: " + message["data"].encode() + b"\n\n"
        finally:
            await layer.group_discard(group, channel)

    response = StreamingHttpResponse(stream(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response

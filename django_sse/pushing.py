"""Pushing committed events to the channel layer: the second stage, after recording.

``recording.py`` hands each committed batch of events to ``push_events`` (in a
``transaction.on_commit`` callback, so in a sync thread: a view, a task worker, a management
command or a plain thread). It never raises: the events are already recorded, and open streams
find anything the layer did not bring in the database (``POLL_SECONDS``).

A batch of one event is one ``django_sse.event`` message. A larger batch (``publish_many``) is
one ``django_sse.events`` message holding the first ``seq`` and the events after it, so a
stream gets it in one piece and a subscriber process makes one pass for it; the messages are
split so that each carries at most ``BATCH_MESSAGE_MAX_BYTES`` of event text (Redis cuts off a
pub/sub client whose output buffer grows past a few megabytes, and a message is held whole in
memory at each hop). A process of an earlier version ignores the batch type (its hub only takes
``django_sse.event``) and its poll reads those events from the database.

- In-memory layer: it is not thread-safe and only reaches this process, so the send is handed
  to the event loop of each stream hub running here (a naive ``async_to_sync(group_send)`` from
  a plain thread arrived seconds late). With no hub in this process nobody could receive it.
  Hubs register their loops here (``register_hub_loop``): this module knows where to send, not
  what a hub does with a message, and never imports the hub.
- Other layers (Redis): sends go through one ``LayerSender`` per process, a long-lived
  background event loop that sends in order and reuses the layer's connections instead of
  opening a loop and a connection per event.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer

from django_sse.conf import conf
from django_sse.groups import EVENT_MESSAGE_TYPE, job_group
from django_sse.jsontext import dump_data

if TYPE_CHECKING:
    from django_sse.models import JobEvent

logger = logging.getLogger("django_sse")

# A message holding several consecutive events of one job: {"type", "job", "seq" (the first
# event's), "events": [[type, data], ...]} (lists: msgpack, Redis's codec, has no tuples).
BATCH_MESSAGE_TYPE = "django_sse.events"
# Most bytes of event text (types and JSON data) in one batch message. An event larger than
# this on its own goes as a single-event message.
BATCH_MESSAGE_MAX_BYTES = 256 * 1024

# Event loops of this process that run a stream hub (weak: a loop that is gone drops out).
_hub_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_hub_loops_lock = threading.Lock()


def register_hub_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Send this process's in-memory layer messages to ``loop`` too (a hub runs on it)."""
    with _hub_loops_lock:
        _hub_loops.add(loop)


def unregister_hub_loop(loop: asyncio.AbstractEventLoop) -> None:
    with _hub_loops_lock:
        _hub_loops.discard(loop)


def hub_loops() -> list[asyncio.AbstractEventLoop]:
    """The registered loops still running (callable from any thread)."""
    with _hub_loops_lock:
        loops = list(_hub_loops)
    return [loop for loop in loops if not loop.is_closed() and loop.is_running()]


def get_layer() -> BaseChannelLayer | None:
    try:
        return get_channel_layer(conf.CHANNEL_LAYER)
    except Exception:
        logger.exception("The channel layer %r cannot be loaded.", conf.CHANNEL_LAYER)
        return None


def event_message(event: JobEvent) -> dict[str, Any]:
    return {
        "type": EVENT_MESSAGE_TYPE,
        "job": event.job_id.hex,
        "seq": event.seq,
        "event": event.type,
        "data": dump_data(event.data),
    }


def batch_messages(events: Sequence[JobEvent]) -> list[dict[str, Any]]:
    """The layer messages of consecutive events of one job, in order: batch messages of at
    most ``BATCH_MESSAGE_MAX_BYTES`` of event text, and a single-event message for a run of
    one."""
    runs: list[list[list[str]]] = []
    firsts: list[JobEvent] = []
    size = BATCH_MESSAGE_MAX_BYTES
    for event in events:
        entry = [event.type, dump_data(event.data)]
        cost = len(entry[0]) + len(entry[1].encode())
        if size + cost > BATCH_MESSAGE_MAX_BYTES:
            runs.append([])
            firsts.append(event)
            size = 0
        runs[-1].append(entry)
        size += cost
    messages: list[dict[str, Any]] = []
    for first, run in zip(firsts, runs, strict=True):
        if len(run) == 1:
            messages.append(event_message(first))
        else:
            messages.append(
                {
                    "type": BATCH_MESSAGE_TYPE,
                    "job": first.job_id.hex,
                    "seq": first.seq,
                    "events": run,
                }
            )
    return messages


def push_events(events: Sequence[JobEvent]) -> None:
    """Send a committed batch (consecutive events of one job) to its job's group, in order:
    one message per event for a batch of one, batch messages otherwise. Logs failures, never
    raises."""
    if len(events) == 1:
        push_event(events[0])
        return
    if not events:
        return
    try:
        layer = get_layer()
        if layer is None:
            return
        group = job_group(events[0].job_id)
        for message in batch_messages(events):
            _submit(layer, group, message)
    except Exception:
        logger.exception(
            "Could not push events #%s to #%s of job %s.",
            events[0].seq,
            events[-1].seq,
            events[0].job_id,
        )


def push_event(event: JobEvent) -> None:
    """Send one committed event to its job's group. Logs failures, never raises."""
    try:
        layer = get_layer()
        if layer is None:
            return
        _submit(layer, job_group(event.job_id), event_message(event))
    except Exception:
        logger.exception("Could not push event #%s of job %s.", event.seq, event.job_id)


def _submit(layer: BaseChannelLayer, group: str, message: dict[str, Any]) -> None:
    if isinstance(layer, InMemoryChannelLayer):
        for loop in hub_loops():
            asyncio.run_coroutine_threadsafe(_send(layer, group, message), loop)
    else:
        layer_sender.submit(layer, group, message)


async def _send(layer: BaseChannelLayer, group: str, message: dict[str, Any]) -> None:
    try:
        await layer.group_send(group, message)
    except Exception as exc:
        batch = message.get("events")
        if batch:
            what = f"events #{message['seq']} to #{message['seq'] + len(batch) - 1}"
        else:
            what = f"event #{message['seq']}"
        logger.warning(
            "Could not push %s of job %s to the channel layer (%r); open streams will read "
            "%s from the database.",
            what,
            message["job"],
            exc,
            "them" if batch else "it",
        )


class LayerSender:
    """One background event loop per process that sends layer messages in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[BaseChannelLayer, str, dict[str, Any]]] | None = None
        self._pid: int | None = None
        self._unfinished = 0

    def submit(self, layer: BaseChannelLayer, group: str, message: dict[str, Any]) -> None:
        loop, queue = self._ensure_running()
        with self._idle:
            self._unfinished += 1
        loop.call_soon_threadsafe(queue.put_nowait, (layer, group, message))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted message was sent (or failed); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    def _ensure_running(
        self,
    ) -> tuple[
        asyncio.AbstractEventLoop, asyncio.Queue[tuple[BaseChannelLayer, str, dict[str, Any]]]
    ]:
        with self._lock:
            # A forked worker (Celery prefork) inherits the object but not the thread.
            if self._loop is None or self._queue is None or self._pid != os.getpid():
                ready = threading.Event()
                loop = asyncio.new_event_loop()
                self._loop, self._pid, self._unfinished = loop, os.getpid(), 0
                thread = threading.Thread(
                    target=self._run,
                    args=(loop, ready),
                    name="django_sse-layer-sender",
                    daemon=True,
                )
                thread.start()
                ready.wait()
            assert self._queue is not None
            return self._loop, self._queue

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._queue = asyncio.Queue()
            ready.set()
            while True:
                layer, group, message = await self._queue.get()
                try:
                    await _send(layer, group, message)
                finally:
                    with self._idle:
                        self._unfinished -= 1
                        self._idle.notify_all()

        loop.run_until_complete(main())


layer_sender = LayerSender()
atexit.register(layer_sender.flush, 5.0)

"""Events as HTML fragments, for htmx's SSE extension (``?format=html`` on a job's stream).

Each event's data is rendered with the first template found of
``django_sse/htmx/<type>.html`` and ``django_sse/htmx/event.html``; a project overrides them the
usual way, with templates of the same name in its own app or templates folder. The context holds
``job_id``, ``type``, ``seq`` and ``data`` (the event's data, decoded) and nothing else: the
templates are rendered in the event loop, so they must not query the database.

After a job's last event the stream sends one more event, ``end`` (data: the job's final
status), for ``sse-close="end"``: htmx's extension would otherwise reconnect to a finished job.
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

from django.template.loader import select_template
from django.utils.translation import get_language

from django_sse.hub import Delivery
from django_sse.queries import StoredEvent
from django_sse.sse import encode_event
from django_sse.stream import JobStream
from django_sse.validation import TERMINAL_TYPES

FORMATS = ("json", "html")
END_EVENT = "end"


# Rendered fragments kept per process: every stream of a job gets the same event, and renders
# it once (per language), not once per subscriber.
FRAGMENT_CACHE_SIZE = 2048


def render_fragment(job_id: uuid.UUID, event: StoredEvent) -> str:
    """The HTML of one event."""
    return _render(job_id, event, get_language())


def clear_fragment_cache(**kwargs: Any) -> None:
    """Forget rendered fragments (connected to ``setting_changed``: TEMPLATES may change)."""
    _render.cache_clear()


@functools.lru_cache(maxsize=FRAGMENT_CACHE_SIZE)
def _render(job_id: uuid.UUID, event: StoredEvent, language: str | None) -> str:
    template = select_template([f"django_sse/htmx/{event.type}.html", "django_sse/htmx/event.html"])
    context: dict[str, Any] = {
        "job_id": job_id,
        "type": event.type,
        "seq": event.seq,
        "data": json.loads(event.data),
    }
    return str(template.render(context)).strip()


def _end(event: StoredEvent) -> bytes:
    return encode_event(event.type, event=END_EVENT)


class FragmentStream(JobStream):
    """A job's stream whose events carry rendered HTML instead of JSON."""

    __slots__ = ()

    # Each live chunk is rendered for this stream's language (activated by Django for the
    # request): not the hub's encoding, and only in the request's own context.
    direct_writes = False

    def _encode(self, events: list[StoredEvent]) -> bytes:
        job_id = self.job_id
        rendered = [
            event._replace(data=render_fragment(job_id, event))
            for event in events
            if event.seq > self.last_seq
        ]
        chunk = super()._encode(rendered)
        terminal = [event for event in rendered if event.type in TERMINAL_TYPES]
        if terminal and self.reason == "job finished":
            chunk += _end(terminal[0])
        return chunk

    def _live_chunk(self, delivery: Delivery) -> bytes:
        event = delivery.event
        html = render_fragment(self.job_id, event)
        chunk = encode_event(html, event=event.type, id=event.seq)
        if delivery.terminal:
            chunk += _end(event)
        return chunk

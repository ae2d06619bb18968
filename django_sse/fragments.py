"""Events as HTML fragments, for htmx (``?format=html`` on a job's stream).

Each event's data is rendered with the first template found of
``django_sse/htmx/<type>.html`` and ``django_sse/htmx/event.html``; a project overrides them the
usual way, with templates of the same name in its own app or templates folder. The context holds
``job_id``, ``type``, ``seq`` and ``data`` (the event's data, decoded) and nothing else. They
are rendered on a thread of their own (in the stream's language), one page of a replay at a
time, so that rendering never holds up the event loop's other streams; they must not query the
database.

The same fragments reach the page in one of two forms, by the client that asks:

- htmx 2's extension (``htmx-ext-sse``) reads the stream with ``EventSource`` and swaps an event
  into the element whose ``sse-swap`` names its type: each event is sent **named** (``event:
  progress``), its data the fragment.
- htmx 4's ``hx-sse`` reads it with ``fetch`` (it sends ``HX-Request: true``, which
  ``EventSource`` cannot) and swaps only **unnamed** messages, named ones becoming DOM events:
  each event is sent unnamed, its fragment wrapped in an ``<hx-partial>`` aimed at the elements
  of the connecting element whose ``data-django-sse-swap`` lists the type. The job's state
  (status, progress) replaces their content; anything else (log lines, a project's own types)
  is appended.

Both carry the event's ``seq`` as the id (the resume point of either extension's reconnection).
After a job's last event the stream sends one more event, named ``end`` in both forms (data: the
job's final status), for ``sse-close="end"`` / ``hx-sse:close="end"``: either extension would
otherwise reconnect to a finished job.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.template.loader import select_template
from django.utils import translation
from django.utils.translation import get_language

from django_sse.admission import Ticket
from django_sse.auth import Access
from django_sse.inbox import EncodedEvent
from django_sse.lifecycle import LIFECYCLE_TYPES, TERMINAL_TYPES
from django_sse.replay import StoredEvent
from django_sse.sse import encode_event
from django_sse.stream import JobStream

if TYPE_CHECKING:
    from django.http import HttpRequest

    from django_sse.sink import Sink

FORMATS = ("json", "html")
END_EVENT = "end"
# What htmx 4 sends with every request, its streams included (django-htmx's ``request.htmx``).
HTMX_REQUEST_HEADER = "HX-Request"
# The attribute that names, on the page, the event types an element shows (htmx 4's form).
SWAP_ATTRIBUTE = "data-django-sse-swap"
# Types whose fragment replaces the element's content in htmx 4's form; any other is appended.
REPLACED_TYPES = LIFECYCLE_TYPES


# Rendered fragments kept per process: every stream of a job gets the same event, and renders
# it once (per language), not once per subscriber.
FRAGMENT_CACHE_SIZE = 2048

# Templates are rendered here, not on the event loop: a replay of thousands of events renders
# for a while, and every other stream of the process would wait meanwhile. One thread: the
# renders of all streams take turns, and the loop keeps the interpreter half the time at least.
_render_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="django_sse-render")


def render_fragment(job_id: uuid.UUID, event: StoredEvent, language: str | None = None) -> str:
    """The HTML of one event (in the active language, or ``language``)."""
    return _render(job_id, event, get_language() if language is None else language)


# Connected here, not in ready(): the cache exists only once this module is imported.
@receiver(setting_changed, dispatch_uid="django_sse.clear_fragment_cache")
def clear_fragment_cache(**kwargs: Any) -> None:
    """Forget rendered fragments when a setting changes (TEMPLATES, LANGUAGES ...)."""
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
    with translation.override(language):
        return str(template.render(context)).strip()


def _render_all(job_id: uuid.UUID, events: list[StoredEvent], language: str | None) -> list[str]:
    return [_render(job_id, event, language) for event in events]


async def render_fragments(
    job_id: uuid.UUID, events: list[StoredEvent], language: str | None
) -> list[str]:
    """The HTML of each event, rendered on the render thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _render_thread, functools.partial(_render_all, job_id, events, language)
    )


def wrap_partial(event_type: str, html: str) -> str:
    """``html`` as htmx 4's ``<hx-partial>`` for the elements that show ``event_type``: found
    with ``findAll`` from the connecting element (several jobs can share a page), so only its
    descendants qualify. An event type is letters, digits, ``_``, ``-`` and ``.`` (checked at
    publish time): safe inside the quotes."""
    swap = "innerHTML" if event_type in REPLACED_TYPES else "beforeend"
    target = f"findAll [{SWAP_ATTRIBUTE}~='{event_type}']"
    return f'<hx-partial hx-target="{target}" hx-swap="{swap}">{html}</hx-partial>'


def encode_fragment(event: StoredEvent, html: str, *, partials: bool) -> bytes:
    """One event with ``html`` as its data: named for htmx 2, an unnamed partial for htmx 4."""
    if partials:
        return encode_event(wrap_partial(event.type, html), id=event.seq)
    return encode_event(html, event=event.type, id=event.seq)


def _end(event: StoredEvent) -> bytes:
    return encode_end(event.type)


def encode_end(status: str) -> bytes:
    """The ``end`` event after a job's last event (its data: the job's final status)."""
    return encode_event(status, event=END_EVENT)


class FragmentStream(JobStream):
    """A job's stream whose events carry rendered HTML instead of JSON."""

    # Each chunk is rendered for this stream's language: not the hub's encoding, and the
    # stream stays in Django's response loop (where the language was activated).
    detachable = False
    metric_kind = "html"

    def __init__(
        self,
        request: HttpRequest,
        access: Access,
        resume_from: int,
        ticket: Ticket,
        checked_at: float | None = None,
        *,
        sink: Sink | None = None,
    ) -> None:
        super().__init__(request, access, resume_from, ticket, checked_at, sink=sink)
        self.language = get_language()
        # htmx 4's hx-sse (a fetch, with htmx's headers) rather than an EventSource.
        self.partials = request.headers.get(HTMX_REQUEST_HEADER) == "true"

    @property
    def form(self) -> str:
        """Which of the two forms this stream sends, for its log lines."""
        return "partials" if self.partials else "events"

    def opened_fields(self) -> str:
        return f"{super().opened_fields()} html={self.form}"

    def closed_fields(self) -> str:
        return f"{super().closed_fields()} html={self.form}"

    async def encode_page(self, events: list[StoredEvent]) -> bytes:
        events = [event for event in events if event.seq > self.last_seq]
        if not events:
            return b""
        html = await render_fragments(self.job_id, events, self.language)
        parts: list[bytes] = []
        for event, text in zip(events, html, strict=True):
            parts.append(encode_fragment(event, text, partials=self.partials))
            self.last_seq = event.seq
            self.sent += 1
            if event.type in TERMINAL_TYPES:
                self.finished = True
                parts.append(_end(event))
                break
        return b"".join(parts)

    async def encode_live(self, items: list[EncodedEvent]) -> bytes:
        # drain() has done the bookkeeping (last_seq, sent, finished) for these.
        events = [item.event for item in items]
        html = await render_fragments(self.job_id, events, self.language)
        parts = [
            encode_fragment(event, text, partials=self.partials)
            for event, text in zip(events, html, strict=True)
        ]
        if items[-1].terminal:
            parts.append(_end(events[-1]))
        return b"".join(parts)

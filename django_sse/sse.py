"""The Server-Sent Events wire format (WHATWG HTML, "Server-sent events").

Pure functions that turn fields into bytes. Field injection is impossible by construction: the
caller validates ``event`` (``lifecycle.validate_event_type``) and ``id``, and ``data`` is split
on every kind of line break the browser recognises (CRLF, LF, CR) so each line gets its own
``data:``.
"""

from __future__ import annotations

import re

# The browser splits lines on CRLF, a lone LF or a lone CR.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")

HEARTBEAT = b": ping\n\n"


def _check_field(name: str, value: str) -> None:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise ValueError(f"SSE field {name!r} must not contain CR, LF or NUL: {value!r}")


def encode_event(data: str, *, event: str | None = None, id: str | int | None = None) -> bytes:
    """Encode one event. ``data`` may hold any text, line breaks included."""
    parts: list[str] = []
    if id is not None:
        id_text = str(id)
        if type(id) is not int:
            _check_field("id", id_text)
        parts.append(f"id: {id_text}\n")
    if event is not None:
        _check_field("event", event)
        parts.append(f"event: {event}\n")
    if "\n" in data or "\r" in data:
        # A leading space after the colon is stripped by the parser, so "data: " + line keeps
        # a line that itself starts with a space intact (only the first space is removed).
        parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    else:
        parts.append(f"data: {data}\n")  # JSON text always takes this path
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_retry(milliseconds: int) -> bytes:
    """The reconnection delay for EventSource; only ASCII digits count."""
    if milliseconds < 0:
        raise ValueError("retry must be a non-negative number of milliseconds")
    return f"retry: {int(milliseconds)}\n\n".encode("ascii")


def encode_comment(text: str) -> bytes:
    """A comment line, ignored by the browser (used for heartbeats and padding)."""
    _check_field("comment", text)
    return f": {text}\n\n".encode()

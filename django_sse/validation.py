"""Checks on what callers hand to the streams: resume ids."""

from __future__ import annotations

# A resume id longer than this is not one we ever sent (seq is a 64-bit integer).
MAX_RESUME_ID_DIGITS = 19


def parse_resume_id(value: str | None) -> int | None:
    """A ``Last-Event-ID`` we could have sent: a plain non-negative integer of sane length."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_RESUME_ID_DIGITS or not value.isascii():
        return None
    if not value.isdigit():
        return None
    return int(value)

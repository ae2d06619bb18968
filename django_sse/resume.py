"""Resume points: where a reconnecting browser's stream takes up, read from its ``Last-Event-ID``.

A job's stream sends each event's ``seq`` as its id, so its resume point is that number
(``decode_job_resume_point``).

The stream of all of a session's jobs carries a resume point of its own in each event's id.
A single global counter is no resume point: PostgreSQL may commit the event numbered 101 before
the one numbered 100, and a reader that resumes "after 101" loses 100. Per-job ``seq`` numbers
have no such hole (they are allocated under the job's row lock), so the id carries the position
in each job the stream follows, kept short (an id over 128 bytes makes browsers send CORS
preflights for cross-origin streams):

    <horizon>.<job 1><seq 1>.<job 2><seq 2>...

``horizon`` is a Unix time in seconds, base 36: every job created before
``horizon - MARGIN_SECONDS`` that is not listed was, when the id was written, either fully sent
or finished before the stream began. Each job is named by the first 8 hex digits of its UUID
(unique among one session's jobs in practice; an ambiguous one is treated as unknown) followed by
its last sent ``seq`` in base 36. Only jobs still running, or created within the margin, are
listed.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import NamedTuple

# A job created this long before the stream last looked for new jobs is surely committed by then
# (transactions of that length would be a bug of their own).
MARGIN_SECONDS = 120
JOB_REF_LENGTH = 8
_TOKEN = re.compile(r"\A[0-9a-z]{1,13}(\.[0-9a-f]{8}[0-9a-z]{1,13}){0,200}\Z")


class ResumePoint(NamedTuple):
    horizon: int
    positions: dict[str, int]  # job ref (8 hex digits) -> last sent seq


def base36(number: int) -> str:
    if number < 0:
        raise ValueError("base36 of a negative number")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def job_ref(job_id: uuid.UUID) -> str:
    return job_id.hex[:JOB_REF_LENGTH]


def encode_resume_point(horizon: int, positions: dict[uuid.UUID, int]) -> str:
    parts = [base36(horizon)]
    parts.extend(f"{job_ref(job_id)}{base36(seq)}" for job_id, seq in sorted(positions.items()))
    return ".".join(parts)


class InvalidResumePoint(ValueError):
    """A ``Last-Event-ID`` that is not a resume point this server could have written."""


# The largest seq a database column can hold (a 64-bit signed integer).
MAX_SEQ = 2**63 - 1
# A job stream's resume point longer than this is not one we ever sent (seq is a 64-bit integer).
MAX_SEQ_DIGITS = 19


def decode_job_resume_point(raw: str | None) -> int:
    """The ``seq`` in a job stream's ``Last-Event-ID`` (0 for none): a plain non-negative
    integer of sane length, surrounding whitespace aside. Raises ``InvalidResumePoint`` for
    anything else (an empty value included)."""
    if raw is None:
        return 0
    value = raw.strip()
    if not value or len(value) > MAX_SEQ_DIGITS or not value.isascii() or not value.isdigit():
        raise InvalidResumePoint("not an event number")
    return int(value)


def decode_resume_point(raw: str | None, now: float | None = None) -> ResumePoint | None:
    """The resume point in ``raw`` (None for none). Raises ``InvalidResumePoint``, saying why,
    for one we could not have written: malformed, a horizon after ``now`` (a Unix time, by
    default the current one, give or take ``MARGIN_SECONDS`` of clock skew between servers) or
    a position past what the database can hold."""
    if not raw:
        return None
    if len(raw) > 4096 or not _TOKEN.match(raw):
        raise InvalidResumePoint("not a resume point")
    horizon_text, *entries = raw.split(".")
    horizon = int(horizon_text, 36)
    if horizon > (time.time() if now is None else now) + MARGIN_SECONDS:
        raise InvalidResumePoint("its time is in the future")
    positions: dict[str, int] = {}
    for entry in entries:
        ref, seq = entry[:JOB_REF_LENGTH], int(entry[JOB_REF_LENGTH:], 36)
        if seq > MAX_SEQ:
            raise InvalidResumePoint("a position is past the largest event number")
        positions[ref] = max(seq, positions.get(ref, 0))
    return ResumePoint(horizon, positions)

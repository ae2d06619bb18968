"""The resume point of the stream of all of a visitor's jobs."""

from __future__ import annotations

import uuid

import pytest

from django_sse.resume import (
    MARGIN_SECONDS,
    MAX_SEQ,
    InvalidResumePoint,
    ResumePoint,
    base36,
    decode_job_resume_point,
    decode_resume_point,
    encode_resume_point,
    job_ref,
)

NOW = 1_800_000_000


def test_resume_point_round_trip() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    raw = encode_resume_point(NOW, {a: 5, b: 123_456})
    assert decode_resume_point(raw, NOW) == ResumePoint(NOW, {job_ref(a): 5, job_ref(b): 123_456})
    assert raw.startswith(base36(NOW) + ".")


def test_resume_point_stays_short() -> None:
    positions = {uuid.uuid4(): 50_000 for _ in range(7)}
    assert len(encode_resume_point(NOW, positions)) <= 128


def test_no_resume_point() -> None:
    assert decode_resume_point(None, NOW) is None
    assert decode_resume_point("", NOW) is None


@pytest.mark.parametrize(
    "raw", ["x" * 5000, "abc.xyz", "abc.12345678", "ABC", "1.1234567g1", "1..2", "1.\n"]
)
def test_malformed_resume_points(raw: str) -> None:
    with pytest.raises(InvalidResumePoint, match="not a resume point"):
        decode_resume_point(raw, NOW)


@pytest.mark.parametrize(
    "raw",
    [
        # 13 base-36 digits: far past any date a datetime can hold (an OverflowError once).
        "zzzzzzzzzzzzz",
        base36(NOW + MARGIN_SECONDS + 1),
    ],
)
def test_a_resume_point_from_the_future_is_refused(raw: str) -> None:
    with pytest.raises(InvalidResumePoint, match="future"):
        decode_resume_point(raw, NOW)


def test_a_little_clock_skew_is_allowed() -> None:
    raw = base36(NOW + MARGIN_SECONDS)
    assert decode_resume_point(raw, NOW) == ResumePoint(NOW + MARGIN_SECONDS, {})


def test_a_position_past_what_the_database_holds_is_refused() -> None:
    ref = "0123abcd"
    assert decode_resume_point(f"{base36(NOW)}.{ref}{base36(MAX_SEQ)}", NOW) == ResumePoint(
        NOW, {ref: MAX_SEQ}
    )
    with pytest.raises(InvalidResumePoint, match="largest"):
        decode_resume_point(f"{base36(NOW)}.{ref}zzzzzzzzzzzzz", NOW)


# -- a job stream's resume point: the seq of the last event the browser got ------------------


@pytest.mark.parametrize(
    ("raw", "seq"),
    [(None, 0), ("0", 0), ("7", 7), (" 42\t", 42), ("007", 7), ("9" * 19, int("9" * 19))],
)
def test_a_job_resume_point_is_an_event_number(raw: str | None, seq: int) -> None:
    assert decode_job_resume_point(raw) == seq


@pytest.mark.parametrize(
    "raw", ["", "  ", "-1", "+1", "1.5", "1e3", "0x10", "1 2", "9" * 20, "\u0661", "abc", "1\n2"]
)
def test_a_job_resume_point_we_could_not_have_sent_is_refused(raw: str) -> None:
    with pytest.raises(InvalidResumePoint):
        decode_job_resume_point(raw)

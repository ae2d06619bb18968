"""The resume point of the stream of all of a visitor's jobs."""

from __future__ import annotations

import uuid

import pytest

from django_sse.resume import (
    ResumePoint,
    base36,
    decode_resume_point,
    encode_resume_point,
    job_ref,
)


def test_resume_point_round_trip() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    raw = encode_resume_point(1_800_000_000, {a: 5, b: 123_456})
    assert decode_resume_point(raw) == ResumePoint(
        1_800_000_000, {job_ref(a): 5, job_ref(b): 123_456}
    )
    assert raw.startswith(base36(1_800_000_000) + ".")


def test_resume_point_stays_short() -> None:
    positions = {uuid.uuid4(): 50_000 for _ in range(7)}
    assert len(encode_resume_point(1_800_000_000, positions)) <= 128


@pytest.mark.parametrize(
    "raw", ["", "x" * 5000, "abc.xyz", "abc.12345678", "ABC", "1.1234567g1", "1..2", "1.\n"]
)
def test_bad_resume_points(raw: str) -> None:
    assert decode_resume_point(raw) is None

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_sse.sse import HEARTBEAT, encode_comment, encode_event, encode_retry
from tests.sse_parser import Parser


def parse(raw: bytes) -> Parser:
    parser = Parser()
    parser.feed(raw)
    return parser


def test_event_with_id_type_and_data() -> None:
    assert encode_event('{"a":1}', event="progress", id=7) == (
        b'id: 7\nevent: progress\ndata: {"a":1}\n\n'
    )


def test_data_only() -> None:
    assert encode_event("hello") == b"data: hello\n\n"


@pytest.mark.parametrize("data", ["a\nb", "a\r\nb", "a\rb"])
def test_every_line_break_becomes_a_data_line(data: str) -> None:
    assert encode_event(data) == b"data: a\ndata: b\n\n"


def test_empty_data_is_still_dispatched() -> None:
    parser = parse(encode_event("", event="x"))
    assert [(e.type, e.data) for e in parser.events] == [("x", "")]


def test_leading_space_in_data_survives() -> None:
    assert parse(encode_event("  two spaces")).events[0].data == "  two spaces"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_event_type_with_line_break_or_nul_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="must not contain CR, LF or NUL"):
        encode_event("x", event=bad)


@pytest.mark.parametrize("bad", ["1\n2", "1\x00"])
def test_id_with_line_break_or_nul_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="'id'"):
        encode_event("x", id=bad)


def test_retry() -> None:
    assert encode_retry(2500) == b"retry: 2500\n\n"
    assert parse(encode_retry(2500)).retry == 2500
    with pytest.raises(ValueError):
        encode_retry(-1)


def test_comment_and_heartbeat_dispatch_nothing() -> None:
    parser = parse(encode_comment("hello") + HEARTBEAT)
    assert parser.events == []
    assert parser.comments == ["hello", "ping"]
    with pytest.raises(ValueError):
        encode_comment("a\nb")


def test_non_ascii_is_utf8() -> None:
    raw = encode_event("héllo ✓ 日本")
    assert raw == "data: héllo ✓ 日本\n\n".encode()


# Text with everything that troubles SSE: CR, LF, CRLF, NUL, BOM, leading spaces, colons.
tricky_text = st.lists(
    st.one_of(
        st.sampled_from(["\r", "\n", "\r\n", "\x00", "\ufeff", " ", ":", "data:", "id: 9"]),
        st.text(st.characters(codec="utf-8"), max_size=5),
    ),
    max_size=12,
).map("".join)
event_types = st.from_regex(r"\A[A-Za-z0-9_.\-]{1,64}\Z")


def normalise_breaks(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@given(data=tricky_text, event=event_types, seq=st.integers(min_value=0, max_value=2**63))
def test_any_event_round_trips_through_a_whatwg_parser(data: str, event: str, seq: int) -> None:
    raw = encode_retry(1000) + encode_event(data, event=event, id=seq) + HEARTBEAT
    parser = Parser()
    # Feed it in small pieces: chunk boundaries must not matter (the test parser decodes per
    # chunk, so pieces are cut on character boundaries).
    text = raw.decode("utf-8")
    for index in range(0, len(text), 7):
        parser.feed(text[index : index + 7])
    assert len(parser.events) == 1
    received = parser.events[0]
    assert received.type == event
    assert received.last_event_id == str(seq)
    # The browser cannot tell CR, LF and CRLF apart: all arrive as LF.
    assert received.data == normalise_breaks(data)
    assert parser.retry == 1000


@given(datas=st.lists(tricky_text, min_size=1, max_size=5))
def test_consecutive_events_stay_separate(datas: list[str]) -> None:
    raw = b"".join(encode_event(d, event="e", id=i) for i, d in enumerate(datas, 1))
    parser = parse(raw)
    assert [e.data for e in parser.events] == [normalise_breaks(d) for d in datas]
    assert [e.last_event_id for e in parser.events] == [str(i) for i in range(1, len(datas) + 1)]

"""The fast paths (``django_sse/fastpaths/``) give what the plain, public route gives."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from django_sse.fastpaths.jsoncodec import build_compact_dumps, json_text
from django_sse.jsontext import dump_data

# -- jsoncodec: the JSON text of stored data ---------------------------------------------------

# Values json.loads can give back: what a JSONField column holds.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


def reference(value: Any) -> str:
    """What the ORM's JSONField.from_db_value and dump_data made of a column value."""
    if value is None:
        return "null"
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        decoded = value
    return dump_data(decoded)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_json_text_is_dump_data_of_the_decoded_value(value: Any) -> None:
    # As stored (SQLite: compact, ASCII escapes) and as PostgreSQL's jsonb gives it back.
    for text in (
        json.dumps(value, separators=(",", ":")),
        json.dumps(value, ensure_ascii=False),
        f" {json.dumps(value)}\n",
    ):
        assert json_text(text) == reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        '{"a": 1} trailing',
        "[1, 2",
        "NaN",
        "-Infinity",
        '"\\ud800"',
        '{"é": "\\u00e9", "s": "a\\nb\\r\\u2028"}',
        "1e-07",
        "0.0000001",
        "100000000000000000000000",
        "12.50",
    ],
)
def test_json_text_of_odd_column_values(text: str) -> None:
    assert json_text(text) == reference(text)
    assert json_text(None) == "null"


def test_compact_encoder_without_the_c_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    encode = build_compact_dumps()
    value = {"a": [1, 2.5, None, True], "é": "ü\n"}
    assert encode(value) == dump_data(value)


@pytest.mark.parametrize("fault", ["disagrees", "raises"])
def test_compact_encoder_is_checked_before_use(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    real = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    assert real is not None

    def changed(*args: Any) -> Any:
        if args[0] is not None:  # json.dumps' own call (it checks for cycles): untouched
            return real(*args)
        if fault == "raises":
            raise TypeError("another signature")
        return real(*args[:4], ": ", ", ", *args[6:])  # spaces after the separators

    monkeypatch.setattr(json.encoder, "c_make_encoder", changed)
    encode = build_compact_dumps()
    assert encode({"a": [1, 2]}) == '{"a":[1,2]}'

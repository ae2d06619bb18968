"""Compact JSON text of event data, built by the standard library's C encoder and scanner
without ``json.dumps``' and ``json.loads``' per-call set-up: a replay's cost per event.

What it relies on that the standard library does not promise (checked on CPython 3.10 to 3.13):

- ``json.encoder.c_make_encoder``, the C encoder ``json.dumps`` builds for every call, with its
  positional signature. ``build_compact_dumps()`` builds it once, checks it against
  ``jsontext.dump_data`` on samples and falls back to Django's encoder if it is missing or
  encodes differently.
- ``JSONDecoder.scan_once``, the C scanner under ``json.loads``, returning ``(value, end)``.
  Text it does not consume whole goes through ``json.loads`` as before.

``tests/test_fastpaths.py`` checks that both routes give the same text.
"""

from __future__ import annotations

import contextlib
import json
import json.encoder
from collections.abc import Callable
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from django_sse.jsontext import SEPARATORS


def _no_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def build_compact_dumps() -> Callable[[Any], str]:
    """``jsontext.dump_data`` for decoded JSON, a replay's cost per event.

    Decoded JSON holds dicts, lists, strings, numbers, booleans and None only, so Django's
    encoder never gets to its ``default()``. The standard library's C encoder does the work
    either way; ``json.dumps`` builds a new one for every call, this one is built once. Should
    the C encoder be missing or encode differently, the plain encoder is used.
    """
    reference = DjangoJSONEncoder(separators=SEPARATORS, ensure_ascii=False).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return reference
    try:
        encoder = make(
            None, _no_default, json.encoder.encode_basestring, None, ":", ",", False, False, True
        )

        def encode(value: Any) -> str:
            return "".join(encoder(value, 0))

        samples: list[Any] = [
            {"a": [1, -2.5, 1e-07, 1e300, 10**30, True, False, None], "": {}, "b": []},
            'é \n " \\ \u2028 \x00 \x7f',
            1.5,
            None,
        ]
        if any(encode(sample) != reference(sample) for sample in samples):
            return reference
    except Exception:
        return reference
    return encode


# ``jsontext.dump_data`` of decoded JSON (dicts, lists, strings, numbers, booleans, None).
compact_dumps = build_compact_dumps()
# The C scanner under ``json.loads``, without its wrapper (``json.loads`` still handles what it
# leaves out: surrounding whitespace, trailing data, errors).
_scan: Callable[[str, int], tuple[Any, int]]
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def json_text(value: Any) -> str:
    """Compact JSON text of a ``data`` column value as the driver returns it: what the ORM's
    ``JSONField.from_db_value`` (text that is not JSON stays a string) and
    ``jsontext.dump_data`` make of it."""
    if value is None:
        return "null"
    if isinstance(value, str):
        try:
            decoded, end = _scan(value, 0)
        except (StopIteration, ValueError):
            end = -1
        if end == len(value):
            return compact_dumps(decoded)
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)
    return compact_dumps(value)

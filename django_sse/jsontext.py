"""Event data as JSON: the one encoding of the package.

Event data is encoded once, when it is published, with Django's JSON encoder (dates, decimals,
UUIDs and lazy strings become strings) and without spaces. The value stored is the encoded value
read back, so what a replay reads from the database, what the layer carries and what a live
stream sends are the same compact JSON text. Each use goes through here:

- ``encode_data``: checks and encodes what a caller publishes (``MAX_DATA_BYTES``);
- ``dump_data``: the text of a value already encoded (the layer message of an event);
- ``CompactJSONEncoder``: the model field's encoder, so the database keeps the same text;
- ``fastpaths.jsoncodec.json_text``: the text of a value as the database driver returns it
  (a replay), by a faster route that gives the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from django_sse.conf import conf
from django_sse.exceptions import EventDataNotSerializable, EventDataTooLarge

SEPARATORS = (",", ":")


class CompactJSONEncoder(DjangoJSONEncoder):
    """Django's encoder without spaces: stored event data (and so a replay) reads as the live
    stream's compact JSON where the database keeps the text as given (SQLite)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["separators"] = SEPARATORS
        super().__init__(*args, **kwargs)


def dump_data(data: Any) -> str:
    """Compact JSON text of ``data``: event data as a stream sends it."""
    return json.dumps(data, cls=DjangoJSONEncoder, separators=SEPARATORS, ensure_ascii=False)


def encode_data(data: Any) -> tuple[Any, str]:
    """Encode ``data`` with Django's JSON encoder and check its size.

    Returns the value as it will be stored and read back (dates, decimals and UUIDs become
    strings) and its compact JSON text. Raises ``EventDataNotSerializable`` or
    ``EventDataTooLarge``.
    """
    try:
        text = dump_data(data)
    except (TypeError, ValueError) as exc:
        raise EventDataNotSerializable(f"Event data cannot be encoded as JSON: {exc}") from exc
    size = len(text.encode("utf-8"))
    limit = conf.MAX_DATA_BYTES
    if size > limit:
        raise EventDataTooLarge(
            f"Event data is {size} bytes of JSON, over the limit of {limit} bytes "
            f"(DJANGO_SSE['MAX_DATA_BYTES'])."
        )
    return json.loads(text), text

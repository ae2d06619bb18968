"""Signal receivers. django_sse sends no signals of its own.

``JobEvent`` ``post_save`` -> ``transaction.on_commit`` -> push to the channel layer: an event of
a rolled-back transaction is never delivered, and one recorded inside ``atomic()`` only after
the outermost block commits.
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import transaction

from django_sse.delivery import push_event


def push_event_on_commit(
    sender: type[Any], instance: Any, created: bool, raw: bool, using: str, **kwargs: Any
) -> None:
    if not created or raw:
        return
    transaction.on_commit(functools.partial(push_event, instance), using=using, robust=True)

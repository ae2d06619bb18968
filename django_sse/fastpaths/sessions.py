"""Reading the sessions of streams that are checked together with one query.

Django's database ``SessionStore`` (``django.contrib.sessions.backends.db``) reads its row the
first time it is used: one query per stream. When a reconnect storm brings thousands of
streams at once, their authorization (``auth.authorize_streams``) and, a heartbeat later, their
session checks (``auth.reauthorize_streams``) made one query each. ``preload_sessions`` reads
every row they need in one query and hands each store the data its ``load()`` would have
returned.

What it relies on that Django does not promise (checked on Django 5.2 and 6.0): that a store
keeps what it loaded in ``SessionBase._session_cache``, read by ``_get_session`` when present
and filled from ``load()`` when not; and that ``load()`` is ``decode(row.session_data)`` of the
row with the store's key that has not expired. Only stores of exactly that class are preloaded
(a subclass may load differently); a store already loaded, without a key, or whose row is not
found (expired, deleted) is left to load itself, which is also what ``preload_sessions_plain``
does for every store. ``tests/test_fastpaths.py`` checks that both routes give every store the
same data and the same key.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.sessions.backends.db import SessionStore
from django.utils import timezone

# Larger IN lists are split, to stay under every backend's parameter limit.
_IN_CHUNK = 500


def preload_sessions(stores: Iterable[object]) -> int:
    """Load the database sessions among ``stores`` that are not loaded yet, with one query per
    500; how many were loaded. Any other store is left as it is (it loads itself when used)."""
    waiting: dict[str, list[SessionStore]] = {}
    for store in stores:
        if type(store) is not SessionStore or hasattr(store, "_session_cache"):
            continue
        key = store.session_key
        if key:
            waiting.setdefault(key, []).append(store)
    if not waiting:
        return 0
    model = SessionStore.get_model_class()
    now = timezone.now()
    keys = list(waiting)
    loaded = 0
    for start in range(0, len(keys), _IN_CHUNK):
        rows = model.objects.filter(session_key__in=keys[start : start + _IN_CHUNK])
        for key, data in rows.filter(expire_date__gt=now).values_list(
            "session_key", "session_data"
        ):
            # A database whose collation ignores case (MySQL's default) returns a row for a
            # key that differs only in case: that store loads itself, as on the plain route.
            for store in waiting.get(key, ()):
                # What ``_get_session`` would keep after ``load()``.
                store._session_cache = store.decode(data)  # type: ignore[attr-defined]
                loaded += 1
    return loaded


def preload_sessions_plain(stores: Iterable[object]) -> int:
    """The plain route: every store loads itself when it is first used."""
    return 0

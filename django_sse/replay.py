"""Reading a job's stored events back, a page at a time: the replays of streams, their catch-up
after an inbox overflow, and the hub's gap fills (always on the stream database thread, see
``database.py``).

A page is bounded in events and in bytes, so a replay's memory is bounded whatever the events'
size; the rows come from ``fastpaths/replay_sql.py``, which lets the database cut the page.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import NamedTuple

from django_sse.conf import conf
from django_sse.database import primary
from django_sse.fastpaths.jsoncodec import json_text
from django_sse.fastpaths.replay_sql import PageAsk, PageRows, select_page_rows, select_pages_rows
from django_sse.models import JobEvent


class StoredEvent(NamedTuple):
    seq: int
    type: str
    data: str  # JSON text


class Page(NamedTuple):
    """Stored events read in one go, whether more may follow them (within the range asked
    for), and the bytes of data they hold (as the database counts them)."""

    events: list[StoredEvent]
    more: bool
    size: int = 0


# The first page of a replay asks for this many events at most: the database reads every event
# it is asked for to count their bytes, and a history of large events would make a first page
# of REPLAY_PAGE_SIZE read many megabytes to send a few of them.
FIRST_PAGE_EVENTS = 64


def next_page_limit(page: Page, max_bytes: int, most: int) -> int:
    """How many events to ask for after ``page``: about twice as many as fit in ``max_bytes``
    at the size of the page's events (the database still cuts the next page at
    ``max_bytes``), between 1 and ``most``."""
    if not page.events or page.size <= 0:
        return most
    fitting = max_bytes * len(page.events) // page.size
    return max(1, min(most, 2 * fitting))


def fetch_page(
    job_id: uuid.UUID,
    after: int,
    *,
    upto: int | None = None,
    limit: int = 500,
    max_bytes: int | None = None,
) -> Page:
    """Events of ``job_id`` with ``after < seq <= upto``, oldest first: at most ``limit`` of
    them and at most ``max_bytes`` of data (but always the next one, if any).

    Numbers are allocated without gaps, so the next ``limit`` events are those up to
    ``after + limit``, and the query asks for that range: its cost stays that of one page
    whatever plan the database picks. (Without the upper bound, PostgreSQL with stale
    statistics sorted every later event of the job for each page: a replay of a long history
    took time quadratic in its length.) Should that range come back short, the rest is asked
    for without the bound: it is the end of the history (and that query finds nothing at
    once), or events were deleted by hand.
    """
    if max_bytes is None:
        max_bytes = conf.MAX_BUFFERED_BYTES // 4
    using = primary(JobEvent)

    def select(asks: list[PageAsk]) -> list[PageRows]:
        return [select_page_rows(using, *ask) for ask in asks]

    return _pages([(job_id, after, upto, limit, max_bytes)], select)[0]


def fetch_pages(asks: list[PageAsk]) -> list[Page]:
    """``fetch_page(job_id, after, upto=, limit=, max_bytes=)`` of each ``(job_id, after, upto,
    limit, max_bytes)`` asked, the same pages, in two queries for all at most (the ranges,
    then the rest of those that came back short): the first pages of streams opening
    together."""
    using = primary(JobEvent)
    return _pages(asks, lambda asked: select_pages_rows(using, asked))


def _pages(asks: list[PageAsk], select: Callable[[list[PageAsk]], list[PageRows]]) -> list[Page]:
    """The pages asked for, read by ``select`` (see ``fetch_page``)."""
    bounded: list[PageAsk] = [
        (job_id, after, after + limit if upto is None else min(upto, after + limit), limit, most)
        for job_id, after, upto, limit, most in asks
    ]
    first = select(bounded)
    pages: list[tuple[list[tuple[int, str, object]], bool, int]] = []
    rest_asks: list[PageAsk] = []
    rest_of: list[int] = []  # the page each rest ask completes
    for index, ((job_id, after, upto, limit, most), bound, (rows, cut, used)) in enumerate(
        zip(asks, (ask[2] for ask in bounded), first, strict=True)
    ):
        if not cut and len(rows) < limit and bound != upto:
            start = rows[-1][0] if rows else after
            if used < most or not rows:
                rest_asks.append((job_id, start, upto, limit - len(rows), most - used))
                rest_of.append(index)
            else:
                cut = True
        pages.append((rows, cut, used))
    for index, (rest, cut, more_used) in zip(
        rest_of, select(rest_asks) if rest_asks else [], strict=True
    ):
        rows, _cut, used = pages[index]
        most = asks[index][4]
        if rows and rest and more_used > most - used:
            # The rest's first event is over what is left: it starts the next page.
            rest, cut, more_used = [], True, 0
        pages[index] = (rows + rest, cut, used + more_used)
    result: list[Page] = []
    for (_job_id, _after, _upto, limit, _most), (rows, cut, used) in zip(asks, pages, strict=True):
        events = [StoredEvent(seq, type_, json_text(data)) for seq, type_, data in rows]
        result.append(Page(events, cut or len(events) == limit, used))
    return result


def fetch_events(
    job_id: uuid.UUID,
    after: int,
    *,
    upto: int | None = None,
    limit: int = 500,
    max_bytes: int | None = None,
) -> list[StoredEvent]:
    """The events of ``fetch_page``."""
    return fetch_page(job_id, after, upto=upto, limit=limit, max_bytes=max_bytes).events

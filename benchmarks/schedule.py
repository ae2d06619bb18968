"""Publishing on a schedule (event i is due at t0 + i / rate; rate 0: as fast as possible),
with the lag of each publish against its scheduled time, shared by every publisher.

``credit`` (S8's pacing): a callable giving how many events may be published so far; event i
waits until it exceeds i, so the publisher goes exactly as fast as the server delivers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def summarize(
    n: int, rate: float, t0: float, starts: list[float], costs: list[float], errors: list[str]
) -> dict[str, Any]:
    lags = [s - (t0 + i / rate) for i, s in enumerate(starts)] if rate > 0 else []
    span = (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
    return {
        "n": n,
        "rate_asked": rate,
        "published": len(starts),
        "errors": len(errors),
        "error_sample": errors[:3],
        "t0": t0,
        "t_first": starts[0] if starts else None,
        "t_last": starts[-1] if starts else None,
        "rate_achieved": (len(starts) - 1) / span if span > 0 else None,
        "lag_p50_ms": None if not lags else 1000 * _pct(lags, 0.50),  # type: ignore[operator]
        "lag_p99_ms": None if not lags else 1000 * _pct(lags, 0.99),  # type: ignore[operator]
        "lag_max_ms": None if not lags else 1000 * max(lags),
        "publish_call_p50_ms": None if not costs else 1000 * _pct(costs, 0.50),  # type: ignore[operator]
        "publish_call_p99_ms": None if not costs else 1000 * _pct(costs, 0.99),  # type: ignore[operator]
        "done": True,
    }


def run_sync(
    n: int,
    rate: float,
    publish: Callable[[int, float], Any],
    max_seconds: float,
    credit: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """Call ``publish(i, t)`` n times on schedule (in the calling thread)."""
    t0 = time.time() + 0.05
    deadline = time.monotonic() + max_seconds
    starts: list[float] = []
    costs: list[float] = []
    errors: list[str] = []
    for i in range(n):
        if time.monotonic() > deadline:
            errors.append(f"stopped at {i}: over {max_seconds} s")
            break
        if rate > 0:
            wait = t0 + i / rate - time.time()
            if wait > 0:
                time.sleep(wait)
        while credit is not None and credit() <= i and time.monotonic() < deadline:
            time.sleep(0.0005)
        t = time.time()
        try:
            publish(i, t)
        except Exception as exc:
            errors.append(repr(exc))
            continue
        starts.append(t)
        costs.append(time.time() - t)
    return summarize(n, rate, t0, starts, costs, errors)


async def run_async(
    n: int,
    rate: float,
    publish: Callable[[int, float], Awaitable[Any] | None],
    max_seconds: float,
    credit: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """The same on the running event loop (the peers' in-process publishers)."""
    t0 = time.time() + 0.05
    deadline = time.monotonic() + max_seconds
    starts: list[float] = []
    costs: list[float] = []
    errors: list[str] = []
    for i in range(n):
        if time.monotonic() > deadline:
            errors.append(f"stopped at {i}: over {max_seconds} s")
            break
        if rate > 0:
            wait = t0 + i / rate - time.time()
            await asyncio.sleep(max(0.0, wait))
        else:
            await asyncio.sleep(0)
        # The credit comes from another thread: a short poll, bounded by the deadline.
        while credit is not None and credit() <= i and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.0005)
        t = time.time()
        try:
            result = publish(i, t)
            if result is not None:
                await result
        except Exception as exc:
            errors.append(repr(exc))
            continue
        starts.append(t)
        costs.append(time.time() - t)
    return summarize(n, rate, t0, starts, costs, errors)

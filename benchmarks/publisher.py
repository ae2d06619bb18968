"""A publisher in its own process (a task worker), started by the harness.

python -m benchmarks.publisher --kind ours|naive|eventstream --target JOB_OR_TOPIC \
    --n N --rate R [--mode events|progress|bulk] [--batch B] [--max-seconds S] [--credit]

Sets Django up, prints ``READY``, waits (at most 120 s) for a line on stdin, publishes, and
prints one JSON line of stats: publish rate achieved, lag against each event's scheduled time,
time spent in each publish call. With ``--credit`` (S8) it publishes event i only once a
``CREDIT n`` line with n > i came on stdin: the harness paces it on the slowest subscriber.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.schedule import run_async, run_sync


def read_credit() -> Callable[[], int]:
    """Follow ``CREDIT n`` lines on stdin in a thread; return what was granted so far."""
    granted = [0]

    def follow() -> None:
        for line in sys.stdin:
            if line.startswith("CREDIT "):
                granted[0] = max(granted[0], int(line.split()[1]))

    threading.Thread(target=follow, name="credit", daemon=True).start()
    return lambda: granted[0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", required=True, choices=["ours", "naive", "eventstream"])
    parser.add_argument("--target", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--mode", default="events", choices=["events", "progress", "bulk"])
    parser.add_argument("--batch", type=int, default=1000, help="events per publish_many call")
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--credit", action="store_true", help="wait for CREDIT lines (S8)")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    prepare: Any = None
    if args.kind == "naive":
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        group = "bench_" + args.target
    if args.kind == "ours" and args.mode in ("events", "bulk"):
        # Warm up: import and connect before the clock starts.
        from django_sse.models import Job

        prepare = Job.objects.get(pk=args.target)
    if args.kind == "eventstream":
        from django_eventstream import send_event
        from django_eventstream.models import Event  # noqa: F401  (warm the import)

    sys.stdout.write("READY\n")
    sys.stdout.flush()
    ready, _, _ = select.select([sys.stdin], [], [], 120)
    if not ready:
        return 2
    sys.stdin.readline()
    credit = read_credit() if args.credit else None
    cpu0 = time.process_time()
    stats: dict[str, Any]
    if args.kind == "ours":
        from benchmarks import jobs_work

        if args.mode == "progress":
            stats = jobs_work.progress_loop(args.target, args.n)
        elif args.mode == "bulk":
            stats = jobs_work.publish_bulk(args.target, args.n, args.batch, args.max_seconds)
        else:
            assert prepare is not None
            stats = jobs_work.publish_events(
                args.target, args.n, args.rate, args.max_seconds, credit
            )
    elif args.kind == "naive":

        def send(i: int, t: float) -> Any:
            return layer.group_send(
                group, {"type": "bench.event", "data": json.dumps({"t": t, "i": i})}
            )

        stats = asyncio.run(run_async(args.n, args.rate, send, args.max_seconds, credit))
    else:

        def send_es(i: int, t: float) -> None:
            send_event(args.target, "bench", {"t": t, "i": i})

        stats = run_sync(args.n, args.rate, send_es, args.max_seconds, credit)
    stats["publisher_cpu_s"] = time.process_time() - cpu0
    if args.kind == "ours":
        from django_sse.pushing import layer_sender

        stats["layer_flushed"] = layer_sender.flush(10.0)
    sys.stdout.write(json.dumps(stats) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print a job's events as they are recorded, with a progress bar (for debugging).

Every line goes through ``escape_controls``: event data, progress messages and job names come
from tasks and, through them, from users, and a raw ESC, C1 control, carriage return or bidi
override would let them move the cursor, retitle or clear the operator's terminal, or make a
line read as something else.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_sse.lifecycle import TERMINAL_TYPES
from django_sse.models import Job
from django_sse.replay import fetch_events

BAR_WIDTH = 30


def escape_controls(text: str) -> str:
    """``text`` with every character ``repr()`` would escape (controls, DEL, C1 controls,
    format characters such as bidi overrides, separators but the space) written as its escape
    (``\\x1b``, ``\\u202e``), so that it shows on a terminal and cannot drive it."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def progress_bar(data: Any) -> str:
    if not isinstance(data, dict):
        return ""
    current, total = data.get("current"), data.get("total")
    message = data.get("message") or ""
    if isinstance(current, int) and isinstance(total, int) and total > 0:
        done = min(BAR_WIDTH, BAR_WIDTH * current // total)
        percent = min(100, 100 * current // total)
        return f"[{'#' * done}{'.' * (BAR_WIDTH - done)}] {percent:3d}% {current}/{total} {message}"
    return f"{current} {message}".strip()


class Command(BaseCommand):
    help = "Print the events of a job as they are recorded, until it ends (Ctrl-C stops)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", help="The job's UUID.")
        parser.add_argument("--after", type=int, default=0, help="Start after this event id.")
        parser.add_argument(
            "--interval", type=float, default=0.5, help="Seconds between database reads."
        )
        parser.add_argument(
            "--timeout", type=float, default=None, help="Give up after this many seconds."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            job = Job.objects.get(pk=uuid.UUID(options["job_id"]))
        except (ValueError, Job.DoesNotExist):
            raise CommandError(f"No job {options['job_id']!r}.") from None
        self.stdout.write(escape_controls(f"Job {job.pk} {job.name!r}: {job.status}"))
        last = options["after"]
        deadline = None if options["timeout"] is None else time.monotonic() + options["timeout"]
        try:
            while deadline is None or time.monotonic() < deadline:
                events = fetch_events(job.pk, last, limit=500)
                for event in events:
                    last = event.seq
                    line = f"#{event.seq} {event.type}"
                    if event.type == "progress":
                        line += " " + progress_bar(json.loads(event.data))
                    elif event.data not in ("null", "{}"):
                        line += f" {event.data}"
                    self.stdout.write(escape_controls(line))
                    if event.type in TERMINAL_TYPES:
                        return
                if not events:
                    time.sleep(options["interval"])
        except KeyboardInterrupt:
            return
        raise CommandError(f"Gave up after {options['timeout']} s; the job has not ended.")

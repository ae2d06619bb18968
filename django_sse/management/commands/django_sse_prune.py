"""Delete finished jobs (and their events) older than an age, in bulk."""

from __future__ import annotations

import datetime
import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from django_sse.conf import conf
from django_sse.models import Job, JobEvent

_AGE = re.compile(r"\A(\d+(?:\.\d+)?)([smhd])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
BATCH_SIZE = 1000


def parse_age(value: str) -> datetime.timedelta:
    match = _AGE.match(value.strip())
    if match is None:
        raise CommandError(f"Invalid age {value!r}: use a number and a unit, like 30d, 12h or 90m.")
    return datetime.timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class Command(BaseCommand):
    help = (
        "Delete jobs that finished longer ago than --older-than (default: "
        "DJANGO_SSE['RETENTION_DAYS'] days) and their events, a batch of jobs per query."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", help="An age such as 30d, 12h or 90m.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than"]:
            age = parse_age(options["older_than"])
        else:
            age = datetime.timedelta(days=conf.RETENTION_DAYS)
        cutoff = timezone.now() - age
        old = Job.objects.finished().filter(finished_at__lt=cutoff)
        if options["dry_run"]:
            jobs = old.count()
            events = JobEvent.objects.filter(job__in=old).count()
            self.stdout.write(
                f"Would delete {jobs} jobs and {events} events finished before "
                f"{cutoff:%Y-%m-%d %H:%M}."
            )
            return
        jobs = events = 0
        while True:
            batch = list(old.values_list("pk", flat=True)[:BATCH_SIZE])
            if not batch:
                break
            with transaction.atomic():
                # Events have no delete signals and nothing depends on them: Django deletes
                # them with one DELETE per batch, without loading them.
                events += JobEvent.objects.filter(job_id__in=batch).delete()[0]
                jobs += Job.objects.filter(pk__in=batch).delete()[0]
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {jobs} jobs and {events} events finished before {cutoff:%Y-%m-%d %H:%M}."
            )
        )

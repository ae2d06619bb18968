from __future__ import annotations

import datetime
import io
import threading
import time
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_sse import publish
from django_sse.models import Job, JobEvent

pytestmark = pytest.mark.django_db(transaction=True)


def finished_job(days_ago: float, events: int = 3) -> Job:
    job = Job.objects.create()
    for n in range(events):
        publish(job, "step", n)
    job.succeed()
    Job.objects.filter(pk=job.pk).update(
        finished_at=timezone.now() - datetime.timedelta(days=days_ago)
    )
    return job


def run(*args: Any) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_prune_deletes_old_finished_jobs_and_their_events(
    django_assert_max_num_queries: Any,
) -> None:
    old = [finished_job(40) for _ in range(3)]
    recent = finished_job(5)
    running = Job.objects.create(created_at=timezone.now())
    running.start()
    with django_assert_max_num_queries(12):
        output = run("django_sse_prune")
    assert "Deleted 3 jobs and 12 events" in output
    assert not Job.objects.filter(pk__in=[j.pk for j in old]).exists()
    assert not JobEvent.objects.filter(job_id__in=[j.pk for j in old]).exists()
    assert set(Job.objects.values_list("pk", flat=True)) == {recent.pk, running.pk}


def test_prune_dry_run_deletes_nothing() -> None:
    finished_job(40)
    output = run("django_sse_prune", "--dry-run")
    assert "Would delete 1 jobs and 4 events" in output
    assert Job.objects.count() == 1


def test_prune_age_option_and_setting() -> None:
    finished_job(2)
    assert "Deleted 0 jobs" in run("django_sse_prune")
    assert "Deleted 1 jobs" in run("django_sse_prune", "--older-than", "36h")
    finished_job(2)
    with override_settings(DJANGO_SSE={"RETENTION_DAYS": 1}):
        assert "Deleted 1 jobs" in run("django_sse_prune")


@pytest.mark.parametrize("bad", ["30", "x", "3w", "-1d"])
def test_prune_bad_age(bad: str) -> None:
    with pytest.raises(CommandError, match="Invalid age"):
        run("django_sse_prune", f"--older-than={bad}")


def test_tail_prints_events_live_until_the_end() -> None:
    job = Job.objects.create(name="Export")
    job.start()

    def later() -> None:
        try:
            time.sleep(0.3)
            job.set_progress(5, 10, "halfway")
            publish(job, "log", {"line": "hello"})
            job.succeed({"rows": 10})
        finally:
            connection.close()

    thread = threading.Thread(target=later)
    thread.start()
    output = run("django_sse_tail", str(job.pk), "--interval", "0.05", "--timeout", "10")
    thread.join()
    lines = output.splitlines()
    assert lines[0] == f"Job {job.pk} 'Export': running"
    assert lines[1] == "#1 started"
    assert lines[2].startswith("#2 progress [###############...............]  50% 5/10 halfway")
    assert lines[3] == '#3 log {"line":"hello"}'
    assert lines[4] == '#4 succeeded {"result":{"rows":10}}'


def test_tail_unknown_job() -> None:
    with pytest.raises(CommandError, match="No job"):
        run("django_sse_tail", "nope")


def test_tail_times_out() -> None:
    job = Job.objects.create()
    with pytest.raises(CommandError, match="has not ended"):
        run("django_sse_tail", str(job.pk), "--timeout", "0.2", "--interval", "0.05")


def test_tail_escapes_control_characters_so_event_data_cannot_drive_the_terminal() -> None:
    job = Job.objects.create(name="Ex\x1b[2Jport\u202e")
    job.start()
    job.set_progress(1, 2, "\x1b[31mred\x1b[0m\rfake line\x07")
    publish(job, "log", {"line": "\x9b2J \x7f \u202etxt.exe"})
    job.succeed()
    output = run("django_sse_tail", str(job.pk), "--timeout", "10")
    lines = output.split("\n")
    assert lines[0] == f"Job {job.pk} 'Ex\\x1b[2Jport\\u202e': succeeded"
    assert lines[2].endswith(" 1/2 \\x1b[31mred\\x1b[0m\\rfake line\\x07")
    assert lines[3] == '#3 log {"line":"\\x9b2J \\x7f \\u202etxt.exe"}'
    assert lines[4:] == ['#4 succeeded {"result":null}', ""]
    assert all(line.isprintable() for line in lines)

"""Helper processes of ``test_faults.py`` (``DJANGO_SETTINGS_MODULE=tests.live.e2e_settings``).

``python -m tests.live fault commit JOB_ID [--start] [--events K] [--type T] [--finish]``
    Publish from this process, each event in its own transaction: ``job.start()``, K events of
    type T, ``job.succeed()``. Prints one JSON line ``{"seq": ..., "type": ...}`` per event.

``python -m tests.live fault die JOB_ID [--start] [--committed C] --events K``
    First ``job.start()`` and C events of type ``log``, each committed; then open
    ``transaction.atomic()``, publish K events of type ``doomed`` in it, print one JSON line
    ``{"committed": [...], "seqs": [...], "pid": ...}`` and wait, without committing, to be
    killed (SIGKILL).
    After ``--wait`` seconds (60 by default) it gives up: the transaction rolls back and the
    process exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _print(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def commit(job_id: str, start: bool, events: int, type_: str, finish: bool) -> None:
    from django_sse import publish
    from django_sse.models import Job

    job = Job.objects.get(pk=job_id)
    if start:
        event = job.start()
        _print({"seq": event.seq, "type": event.type})
    for i in range(events):
        event = publish(job, type_, {"i": i})
        _print({"seq": event.seq, "type": event.type})
    if finish:
        event = job.succeed({"events": events})
        _print({"seq": event.seq, "type": event.type})


def die(job_id: str, start: bool, committed: int, events: int, wait: float) -> int:
    from django.db import transaction

    from django_sse import publish
    from django_sse.models import Job

    job = Job.objects.get(pk=job_id)
    done = [job.start().seq] if start else []
    done += [publish(job, "log", {"i": i}).seq for i in range(committed)]
    with transaction.atomic():
        seqs = [publish(job, "doomed", {"i": i}).seq for i in range(events)]
        _print({"committed": done, "seqs": seqs, "pid": os.getpid()})
        deadline = time.monotonic() + wait
        for _ in range(int(wait * 10) + 1):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        transaction.set_rollback(True)
    return 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.live fault")
    commands = parser.add_subparsers(dest="command", required=True)
    commit_cmd = commands.add_parser("commit")
    commit_cmd.add_argument("job_id")
    commit_cmd.add_argument("--start", action="store_true")
    commit_cmd.add_argument("--events", type=int, default=0)
    commit_cmd.add_argument("--type", default="log")
    commit_cmd.add_argument("--finish", action="store_true")
    die_cmd = commands.add_parser("die")
    die_cmd.add_argument("job_id")
    die_cmd.add_argument("--start", action="store_true")
    die_cmd.add_argument("--committed", type=int, default=0)
    die_cmd.add_argument("--events", type=int, default=5)
    die_cmd.add_argument("--wait", type=float, default=60.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.live.e2e_settings")
    import django

    django.setup()
    if args.command == "commit":
        commit(args.job_id, args.start, args.events, args.type, args.finish)
        return 0
    return die(args.job_id, args.start, args.committed, args.events, args.wait)

"""Benchmark-only views: run the publisher in a thread inside the server process.

With the in-memory channel layer an event published by another process reaches streams only
through the database poll (``POLL_SECONDS``), so those configurations publish from here, with
the same ``django_sse.publish`` / ``job.set_progress`` calls an external worker makes.

GET /bench/publish/?run=&job=&n=&rate=&mode=events|progress   starts the thread
GET /bench/stats/?run=                                        its stats ({} while running)
"""

from __future__ import annotations

import threading
from typing import Any

from django.db import connection
from django.http import HttpRequest, JsonResponse

from benchmarks import jobs_work

runs: dict[str, dict[str, Any]] = {}


def start(request: HttpRequest) -> JsonResponse:
    q = request.GET
    run, job_id, mode = q["run"], q["job"], q.get("mode", "events")
    n, rate, max_seconds = int(q["n"]), float(q["rate"]), float(q.get("max", 600))
    runs[run] = {}

    def work() -> None:
        try:
            if mode == "progress":
                runs[run] = jobs_work.progress_loop(job_id, n)
            else:
                runs[run] = jobs_work.publish_events(job_id, n, rate, max_seconds)
        except Exception as exc:
            runs[run] = {"done": True, "errors": 1, "error_sample": [repr(exc)]}
        finally:
            connection.close()

    threading.Thread(target=work, name=f"bench-publisher-{run}", daemon=True).start()
    return JsonResponse({"started": run})


def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse(runs.get(request.GET["run"], {}))

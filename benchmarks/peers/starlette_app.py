"""sse-starlette on uvicorn, following its documented usage: an ``EventSourceResponse`` over an
async generator fed by one in-process ``asyncio.Queue`` per connection.

GET /events                        -> the stream (a retry field first)
GET /bench/publish?run=&n=&rate=   -> publish on this event loop into every queue
GET /bench/stats?run=              -> the publisher's stats
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks.schedule import run_async

queues: set[asyncio.Queue[ServerSentEvent]] = set()
runs: dict[str, dict[str, Any]] = {}
tasks: set[asyncio.Task[None]] = set()


async def events(request: Request) -> EventSourceResponse:
    queue: asyncio.Queue[ServerSentEvent] = asyncio.Queue()

    async def stream() -> Any:
        queues.add(queue)
        try:
            yield ServerSentEvent(retry=3000)
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    return EventSourceResponse(stream(), ping=15)


async def publish(request: Request) -> JSONResponse:
    run = request.query_params["run"]
    n, rate = int(request.query_params["n"]), float(request.query_params["rate"])
    runs[run] = {}

    def send(i: int, t: float) -> None:
        event = ServerSentEvent(data=json.dumps({"t": t, "i": i}), event="bench", id=str(i + 1))
        for q in list(queues):
            q.put_nowait(event)

    async def go() -> None:
        runs[run] = await run_async(n, rate, send, float(request.query_params.get("max", 600)))

    task = asyncio.get_running_loop().create_task(go())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return JSONResponse({"started": run})


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(runs.get(request.query_params["run"], {}))


app = Starlette(
    routes=[
        Route("/events", events),
        Route("/bench/publish", publish),
        Route("/bench/stats", stats),
    ]
)

"""The client of ``test_network.py``, run inside the client's network namespace with
``ip netns exec NS python -m tests.live netns-client MODE ...``. It prints JSON lines on stdout.

``hold URL --cookie SESSION --events N``
    Open the stream, read until it has the ``retry`` field, events 1..N and a heartbeat, print
    ``{"ready": true, "seqs": [...]}``, then keep the connection open without reading or
    closing it, for ``--hold`` seconds at most (the test stops the process before).

``follow URL --cookie SESSION``
    Read the stream to its terminal event as a browser would: whenever the connection fails,
    ends early or stays silent for ``--idle`` seconds, connect again with ``Last-Event-ID``.
    Prints ``{"open": true}`` once the first response has its ``retry`` field, ``{"lost": ...}``
    each time a connection fails, then one ``{"done": ...}`` line with every event id received
    (across connections), the number of connections, the errors that ended them, and the
    seconds it took.

Every wait is bounded (``--deadline`` for the whole run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Generator
from typing import Any

import httpx

from tests.sse_parser import Parser

SESSION_COOKIE = "sessionid"
TERMINAL_TYPES = frozenset({"succeeded", "failed", "cancelled"})
# Between two connections, as EventSource's retry would (shorter: the test's time is bounded).
RECONNECT_SECONDS = 0.2


def say(**values: Any) -> None:
    sys.stdout.write(json.dumps(values) + "\n")
    sys.stdout.flush()


def http_client(idle: float) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(idle, connect=5.0),
        limits=httpx.Limits(max_keepalive_connections=0),
        trust_env=False,
    )


def headers(cookie: str, last_event_id: str) -> dict[str, str]:
    values = {"Accept": "text/event-stream", "Cookie": f"{SESSION_COOKIE}={cookie}"}
    if last_event_id:
        values["Last-Event-ID"] = last_event_id
    return values


def chunks(response: httpx.Response, deadline: float) -> Generator[bytes, None, None]:
    """The body's chunks until ``deadline`` (each read bounded by the client's timeout)."""
    for chunk in response.iter_raw():
        yield chunk
        if time.monotonic() > deadline:
            raise TimeoutError("deadline reached")


def hold(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.deadline
    parser = Parser()
    http = http_client(args.idle)
    context = http.stream("GET", args.url, headers=headers(args.cookie, ""))
    response = context.__enter__()
    if response.status_code != 200:
        say(error=f"status {response.status_code}")
        return 1
    # Kept referenced while the client holds on: a body iterator that is closed (or collected)
    # closes the connection.
    body = chunks(response, deadline)
    for chunk in body:
        parser.feed(chunk)
        if (
            parser.retry is not None
            and len(parser.events) >= args.events
            and parser.comments  # a heartbeat: the stream is past its replay
        ):
            break
    else:
        say(error="the stream ended", seqs=[int(e.last_event_id) for e in parser.events])
        return 1
    say(ready=True, seqs=[int(e.last_event_id) for e in parser.events])
    # Neither read nor close: the test makes this client vanish from the network.
    hold_until = time.monotonic() + args.hold
    while time.monotonic() < hold_until:
        time.sleep(0.5)
    body.close()
    context.__exit__(None, None, None)
    return 0


def follow(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = started + args.deadline
    seqs: list[int] = []
    errors: list[str] = []
    last_event_id = ""
    connections = 0
    finished = False
    opened = False
    with http_client(args.idle) as http:
        while not finished and time.monotonic() < deadline:
            if connections:
                time.sleep(RECONNECT_SECONDS)
            connections += 1
            parser = Parser(last_event_id=last_event_id)
            try:
                with http.stream("GET", args.url, headers=headers(args.cookie, last_event_id)) as r:
                    if r.status_code != 200:
                        errors.append(f"status {r.status_code}")
                        break
                    for chunk in chunks(r, deadline):
                        for event in parser.feed(chunk):
                            seqs.append(int(event.last_event_id))
                            finished = event.type in TERMINAL_TYPES
                        last_event_id = parser.last_event_id
                        if parser.retry is not None and not opened:
                            opened = True
                            say(open=True)
                        if finished:
                            break
                    else:
                        errors.append("ended early")
                        say(lost=errors[-1], last_event_id=last_event_id)
            except (httpx.TransportError, TimeoutError) as exc:
                last_event_id = parser.last_event_id
                errors.append(f"{exc.__class__.__name__}: {exc}")
                say(lost=errors[-1], last_event_id=last_event_id)
    say(
        done=finished,
        seqs=seqs,
        connections=connections,
        errors=errors,
        seconds=round(time.monotonic() - started, 2),
    )
    return 0 if finished else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.live netns-client")
    modes = parser.add_subparsers(dest="mode", required=True)
    for name in ("hold", "follow"):
        mode = modes.add_parser(name)
        mode.add_argument("url")
        mode.add_argument("--cookie", required=True)
        mode.add_argument("--idle", type=float, default=10.0, help="read timeout, seconds")
        mode.add_argument("--deadline", type=float, default=60.0, help="seconds, in all")
    modes.choices["hold"].add_argument("--events", type=int, default=1)
    modes.choices["hold"].add_argument("--hold", type=float, default=120.0)
    args = parser.parse_args(argv)
    return hold(args) if args.mode == "hold" else follow(args)

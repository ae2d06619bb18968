"""Self-test of the harness: parser unit checks, then loss and duplicate counting against the
raw ceiling server with injected faults (event i with i % 7 == 0 never sent, i % 5 == 0 sent
twice): the counts must match exactly.

Then the reconnect storm's accounting (S10, ``storm.py``): the raw server closes every stream
mid-run and resumes each from its ``Last-Event-ID``, exactly (skew 0), one event short (+1) or
one event early (-1); the clients must reconnect with the id, and the counts must be exactly 0,
one lost per connection (a hole in its caught-up prefix) or one duplicate per connection."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from benchmarks import harness, selftest_parser


def storm_case(skew: int) -> bool:
    """One cut-and-resume run with ``--resume-skew skew``; True if every count is exact."""
    from benchmarks import storm

    subs, n, cut = 20, 200, 100
    port = harness.free_port()
    proc = subprocess.Popen(
        [
            harness.PY,
            "-m",
            "benchmarks.peers.raw_server",
            "--port",
            str(port),
            "--retry-ms",
            "50",
            "--cut-at",
            str(cut),
            "--resume-skew",
            str(skew),
            "--lifetime",
            "60",
        ],
        cwd=harness.ROOT,
        env={"PYTHONPATH": str(harness.ROOT)},
    )
    clients = harness.Clients(2)
    try:
        wait_listening(port)
        srv, env = fake_server(port), FakeEnv()
        extra = [{"reconnect": True}] * 2
        opened = clients.open(env, srv, subs, n, "/events", extra=extra)  # type: ignore[arg-type]
        assert opened["subscribed"] == subs, opened
        get(f"http://127.0.0.1:{port}/bench/publish?run=s&n={n}&rate=400")
        got = harness.merge_collect(clients.call("collect", [{"timeout": 5}] * 2, timeout=30))
        stats = wait_done(port, "s")
        acct = storm.merge_catch_up(
            clients.call("storm", [{"t_back": stats["cut_time"]}] * 2, timeout=20)
        )
    finally:
        clients.close()
        proc.terminate()
        proc.wait(5)
    lost = subs * n - got["received"]
    want = {
        "lost": subs if skew > 0 else 0,
        "dups": subs if skew < 0 else 0,
        "reconnects": subs,
        "prefix_holes": subs if skew > 0 else 0,
        "caught_up_conns": 0 if skew > 0 else subs,
    }
    have = {
        "lost": lost,
        "dups": got["dups"],
        "reconnects": got["reconnects"],
        "prefix_holes": acct["prefix_holes"],
        "caught_up_conns": acct["caught_up_conns"],
    }
    print(f"storm, resume skew {skew:+d}: expected {want}; counted {have}")
    return have == want


class FakeEnv:
    def cookie(self) -> str:
        return ""


def fake_server(port: int) -> object:
    class FakeServer:
        pass

    srv = FakeServer()
    srv.port = port  # type: ignore[attr-defined]
    return srv


def wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_done(port: int, run: str) -> dict[str, Any]:
    for _ in range(100):
        stats: dict[str, Any] = get(f"http://127.0.0.1:{port}/bench/stats?run={run}")
        if stats.get("done"):
            return stats
        time.sleep(0.1)
    raise RuntimeError("the raw server's publisher did not finish within 10 s")


def main() -> int:
    selftest_parser.run()
    port = harness.free_port()
    proc = subprocess.Popen(
        [
            harness.PY,
            "-m",
            "benchmarks.peers.raw_server",
            "--port",
            str(port),
            "--drop-every",
            "7",
            "--dup-every",
            "5",
            "--lifetime",
            "120",
        ],
        cwd=harness.ROOT,
        env={"PYTHONPATH": str(harness.ROOT)},
    )
    clients = harness.Clients(2)
    ok = True
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.1)

        class FakeServer:
            pass

        srv = FakeServer()
        srv.port = port  # type: ignore[attr-defined]

        class FakeEnv:
            def cookie(self) -> str:
                return ""

        subs, n = 50, 200
        opened = clients.open(FakeEnv(), srv, subs, n, "/events")  # type: ignore[arg-type]
        assert opened["subscribed"] == subs, opened
        import json
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/publish?run=t&n={n}&rate=0").read()
        got = harness.merge_collect(clients.call("collect", [{"timeout": 3}] * 2, timeout=20))
        dropped = len([i for i in range(n) if i % 7 == 0])
        duplicated = len([i for i in range(n) if i % 5 == 0 and i % 7 != 0])
        want = {"received": subs * (n - dropped), "dups": subs * duplicated}
        have = {"received": got["received"], "dups": got["dups"]}
        lost = subs * n - got["received"]
        print(
            f"fault injection: expected lost={subs * dropped} dup={want['dups']}; "
            f"counted lost={lost} dup={have['dups']}"
        )
        ok = have == want and lost == subs * dropped
        stats = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/stats?run=t").read()
        )
        print("publisher stats:", {k: stats[k] for k in ("published", "rate_achieved")})
    finally:
        clients.close()
        proc.terminate()
        proc.wait(5)
    for skew in (0, 1, -1):
        ok = storm_case(skew) and ok
    print("harness self-test:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

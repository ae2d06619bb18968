"""Self-test of the harness: parser unit checks, then loss and duplicate counting against the
raw ceiling server with injected faults (event i with i % 7 == 0 never sent, i % 5 == 0 sent
twice): the counts must match exactly."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from benchmarks import harness, selftest_parser


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
    print("harness self-test:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

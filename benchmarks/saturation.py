"""S8, saturation: how many deliveries a second one server process makes to 1,000 watchers of
one job when the publisher goes exactly as fast as the server delivers.

At S1's 20 events/s every system delivers what is offered; the question users ask is where a
process stops keeping up. An open-loop publisher answers it badly: past saturation the events
queue (or, in our app, streams fall behind and read from the database) and the figure measures
the queue. So the publisher is paced on the slowest subscriber: each client worker writes the
fewest events any of its connections has into a shared file (``client.py``), and the harness
lets the publisher run at most ``window`` events ahead of that (``CREDIT n`` lines on its
stdin). The peers that publish on the server's own event loop (sse-starlette, the raw ceiling)
are paced by that loop already: a publish is the delivery.

Reported per configuration, in the same run: deliveries/s, and server CPU µs per delivery, the
figure that does not depend on how much of the 2 cores the client took.
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.harness import Env, Publisher, Runner


class Pacer:
    """Relays the slowest subscriber's count to the publisher as credit, in a thread."""

    def __init__(self, path: Path, workers: int, publisher: Publisher, window: int) -> None:
        self.path, self.workers, self.publisher, self.window = path, workers, publisher, window
        self.granted = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.relay, name="s8-pacer", daemon=True)

    def slowest(self) -> int:
        data = self.path.read_bytes()
        return min(int(struct.unpack_from("q", data, 8 * i)[0]) for i in range(self.workers))

    def relay(self) -> None:
        deadline = time.monotonic() + 900
        while not self.stopped.is_set() and time.monotonic() < deadline:
            credit = self.slowest() + self.window
            if credit > self.granted:
                self.granted = credit
                self.publisher.give(credit)
            self.stopped.wait(0.002)

    def start(self) -> None:
        self.publisher.give(self.window)
        self.granted = self.window
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


def run(runner: Runner, config: str, env: Env) -> dict[str, Any]:
    from benchmarks import harness

    q: dict[str, Any] = runner.p["S8"]
    subs, n, window = q["subs"], q["n"], q["window"]
    server = harness.Server(env, runner.tmp)
    workers = max(1, min(runner.args.clients, subs))
    clients = harness.Clients(workers)
    res = runner.base("S8", config, env, server)
    res.update(subscribers=subs, n=n, rate=0.0, window=window)
    paced = harness.publish_path(config) == "external"
    progress = runner.tmp / f"s8-progress-{config}.bin"
    progress.write_bytes(bytes(8 * workers))
    publisher: Publisher | None = None
    pacer: Pacer | None = None
    try:
        job = env.new_job()
        publisher = harness.Publisher(env, server, config, job, n, 0.0, credit=paced)
        extra = [{"progress_file": str(progress), "progress_slot": i} for i in range(workers)]
        res.update(open=clients.open(env, server, subs, n, env.path(job), extra=extra))
        time.sleep(1.0)
        res.update(
            rss_subscribed_kb=harness.rss_kb(server.pid),
            threads_subscribed=harness.threads(server.pid),
            db_conns_subscribed=env.db_conns(server.pid),
            paced_by=("slowest subscriber, window" if paced else "the server's event loop"),
        )
        cpu0, ccpu0 = harness.cpu_s(server.pid), clients.cpu()
        profiler = None
        if runner.args.profile:
            profiler = harness.Profiler(server.pid, runner.profile_dir / f"S8-{config}.txt", 10)
        publisher.go()  # "GO" first: the publisher reads its first stdin line as the start
        if paced:
            pacer = Pacer(progress, workers, publisher, window)
            pacer.start()
        got = harness.merge_collect(
            clients.call("collect", [{"timeout": 240}] * workers, timeout=300)
        )
        server_cpu = harness.cpu_s(server.pid) - cpu0
        if pacer is not None:
            pacer.stop()
        pub_cpu = publisher.cpu()
        pstats = publisher.result(timeout=60)
        if pstats.get("publisher_cpu_s") is None:
            pstats["publisher_cpu_s"] = pub_cpu or None
        res.update(runner.summarize(got, pstats, subs, n, 0.0))
        res.update(
            server_cpu_s=server_cpu,
            client_cpu_s=clients.cpu() - ccpu0,
            rss_end_kb=harness.rss_kb(server.pid),
            threads_end=harness.threads(server.pid),
            publisher=pstats,
        )
        if profiler is not None:
            res["profile"] = profiler.finish()
        if res["received"]:
            res["server_cpu_us_per_delivery"] = 1e6 * server_cpu / res["received"]
            res["deliveries_per_server_cpu_s"] = (
                res["received"] / server_cpu if server_cpu else None
            )
    finally:
        if pacer is not None:
            pacer.stop()
        if publisher is not None:
            publisher.kill()
        clients.close()
        res["server_log_tail"] = server.log_tail()[-600:]
        server.stop()
    return res

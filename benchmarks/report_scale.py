"""RESULTS.md sections and plots of the scale scenarios (issue 14): S8 saturation, S9
admission, S10 reconnect storm, S3 at 10,000 idle streams. Kept apart from ``report.py`` so
that each scenario family reads in one file; ``report.py`` calls ``tables``, ``target_lines``
and ``plots``.
"""

# ruff: noqa: RUF001  (as in report.py: multiplication-sign ratios, en dash for no figure)

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.report import PEERS, SHORT, by, f, ratio, s3_table

Line = Callable[[str, str, str, str, "bool | None"], None]


def s8_table(rows: list[dict[str, Any]]) -> list[str]:
    got = by(rows, "S8")
    if not got:
        return []
    out = [
        "### S8: saturation, 1,000 subscribers to one job, the publisher as fast as the server "
        "delivers",
        "",
        "External publishers are paced on the slowest subscriber (at most `window` events "
        "ahead); sse-starlette and the raw ceiling publish on the server's own event loop.",
        "",
        "| config | paced by | conns | expected | received | lost | dup | deliveries/s | "
        "server CPU s | server CPU µs per delivery | deliveries per server CPU-s | client CPU s "
        "| p50 ms | p99 ms | pub rate achieved |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, r in got.items():
        p = r.get("publisher") or {}
        cells = [
            c,
            str(r.get("paced_by", "")),
            f(r.get("connections")),
            f(r.get("expected")),
            f(r.get("received")),
            f(r.get("lost")),
            f(r.get("duplicated")),
            f(r.get("deliveries_per_s")),
            f(r.get("server_cpu_s"), 2),
            f(r.get("server_cpu_us_per_delivery")),
            f(r.get("deliveries_per_server_cpu_s")),
            f(r.get("client_cpu_s"), 2),
            f(r.get("lat_p50_ms")),
            f(r.get("lat_p99_ms")),
            f(p.get("rate_achieved")),
        ]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    peers = [p for p in PEERS if p in got]
    ours = [c for c in got if c not in PEERS]
    if peers and ours:
        out.append("Deliveries per server CPU-second, ours ÷ peer (higher is better):")
        out.append("")
        out.append("| config | " + " | ".join(SHORT[p] for p in peers) + " |")
        out.append("|---|" + "---|" * len(peers))
        for c in ours:
            mine = got[c].get("deliveries_per_server_cpu_s")
            out.append(
                f"| {c} | "
                + " | ".join(ratio(mine, got[p].get("deliveries_per_server_cpu_s")) for p in peers)
                + " |"
            )
        out.append("")
    return out


def s9_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """S9 rows in run order, one per configuration and size (skipped sizes included)."""
    return [r for r in rows if r.get("scenario") == "S9" and "error" not in r]


def s9_naive(rows: list[dict[str, Any]]) -> dict[int, float]:
    """The naive Django view's admission seconds by size: the reference of the S9 target."""
    return {
        r["streams"]: r["admitted_s"]
        for r in s9_rows(rows)
        if r["config"] == "peer-naive-pubsub" and r.get("admitted_s")
    }


def s9_table(rows: list[dict[str, Any]]) -> list[str]:
    got = s9_rows(rows)
    if not got:
        return []
    naive = s9_naive(rows)
    out = [
        "### S9: admission",
        "",
        "N streams opened as fast as the load client can (50 connecting at a time), each on a "
        "job of its own with 5 stored events; a fresh, warmed-up server per size. *admitted s*: "
        "from the first connect attempt until every stream had its replay (ours and "
        "django-eventstream: all 5 stored events; the naive view, sse-starlette and the raw "
        "ceiling keep no history: their first chunk). Per connection, from its own connect "
        "attempt: first chunk, first event (the first chunk for the peers without history), "
        "whole replay. *failed*: connect errors, HTTP errors, and streams that closed or did "
        "not complete within 120 s. Threads and DB connections with every stream open.",
        "",
        "| config | streams | replay | admitted | failed | connect err | HTTP err | admitted s | "
        "÷ naive | opens/s | first chunk p99 ms | first event p50 ms | first event p99 ms | "
        "replay p99 ms | server CPU s | threads | DB conns |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in got:
        n = r.get("streams")
        if r.get("skipped"):
            out.append(f"| {r['config']} | {f(n)} | skipped: {r['skipped']} |" + " |" * 14)
            continue
        cells = [
            r["config"],
            f(n),
            str(r.get("replay", "")),
            f(r.get("admitted")),
            f(r.get("failed")),
            f(r.get("connect_errors")),
            f(r.get("http_errors")),
            f(r.get("admitted_s"), 2),
            ratio(r.get("admitted_s"), naive.get(n)) if r["config"] != "peer-naive-pubsub" else "–",
            f(r.get("opens_per_s")),
            f(r.get("first_chunk_p99_ms")),
            f(r.get("first_event_p50_ms")),
            f(r.get("first_event_p99_ms")),
            f(r.get("replay_p99_ms")),
            f(r.get("server_cpu_s"), 2),
            f(r.get("threads_end")),
            f(r.get("db_conns_end")),
        ]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out


def s9_target_lines(rows: list[dict[str, Any]], line: Line) -> None:
    """For each of our configurations: the smallest size (2,000 in the full run) admitted in
    at most the naive Django view's time at that size, in the same run; the largest size
    (10,000) without a failed connection."""
    got = [r for r in s9_rows(rows) if r["config"] not in PEERS and not r.get("skipped")]
    naive = s9_naive(rows)
    for c in dict.fromkeys(r["config"] for r in got):
        mine = sorted((r for r in got if r["config"] == c), key=lambda r: r["streams"])
        small, large = mine[0], mine[-1]
        n = small["streams"]
        t, ref = small.get("admitted_s"), naive.get(n)
        line(
            "S9",
            c,
            f"{n:,} admitted ≤ 1.0× the naive Django view's time",
            f"{f(t, 2)} s vs {f(ref, 2)} s ({ratio(t, ref)}); {f(small.get('failed'))} failed",
            None if not (t and ref) else t <= ref,
        )
        failed = large.get("failed")
        line(
            "S9",
            c,
            f"{large['streams']:,} without a failed connection",
            f"{f(large.get('admitted'))}/{f(large['streams'])} admitted, {f(failed)} failed "
            f"(connect {f(large.get('connect_errors'))}, HTTP {f(large.get('http_errors'))}), "
            f"p99 first event {f(large.get('first_event_p99_ms'))} ms",
            failed == 0,
        )


def s10_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if str(r.get("scenario", "")).startswith("S10-") and "error" not in r]


def s10_table(rows: list[dict[str, Any]]) -> list[str]:
    got = s10_rows(rows)
    if not got:
        return []
    out = [
        "### S10: reconnect storm (SIGKILL while jobs publish 10 events/s)",
        "",
        "restart: one server process killed and started again on its port; failover: two "
        "processes, one killed, its clients move to the other. Catch-up counts from the server "
        "being back (restart: listening again; failover: the kill) until the connection had "
        "every event published before it was served again; beyond retry, from the later of "
        "that and the connection's end plus the `retry:` delay (when a browser is back at the "
        "earliest); replay, from its new response's first byte.",
        "",
        "| config | shape | streams | jobs | server restarted | down s | expected | received | "
        "lost | dup | reconnected conns | refused attempts | catch-up p50 s | catch-up max s | "
        "beyond retry max s | replay p99 s | retry s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in got:
        st = r.get("storm") or {}
        cells = [
            r["config"],
            str(r.get("shape")),
            f(r.get("streams")),
            f(r.get("jobs")),
            f(r.get("restarted")) if r.get("shape") == "restart" else "–",
            f(r.get("down_s"), 2),
            f(r.get("expected")),
            f(r.get("received")),
            f(r.get("lost")),
            f(r.get("duplicated")),
            f(st.get("reconnected_conns")),
            f(r.get("refused")),
            f(st.get("catch_up_p50_s"), 2),
            f(st.get("catch_up_max_s"), 2),
            f(st.get("beyond_retry_max_s"), 2),
            f(st.get("replay_p99_s"), 2),
            f(st.get("retry_s")),
        ]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out


def tables(rows: list[dict[str, Any]]) -> list[str]:
    return (
        s8_table(rows)
        + s9_table(rows)
        + s10_table(rows)
        + s3_table(rows, "S3-10k", "S3-10k: idle streams held, up to 10,000 per process")
    )


def target_lines(rows: list[dict[str, Any]], line: Line) -> None:
    s1 = by(rows, "S1")
    star_p99 = s1.get("peer-starlette", {}).get("lat_p99_ms")
    for c, r in s1.items():
        if c in PEERS or not c.startswith("daphne-"):
            continue
        p99 = r.get("lat_p99_ms")
        line(
            "S1",
            c,
            "Daphne: p99 ≤ 1.0× sse-starlette's",
            f"{f(p99)} ms vs {f(star_p99)} ms ({ratio(p99, star_p99)})",
            None if not (p99 and star_p99) else p99 <= star_p99,
        )
    s8 = by(rows, "S8")
    star = s8.get("peer-starlette", {}).get("deliveries_per_server_cpu_s")
    raw = s8.get("peer-raw", {}).get("deliveries_per_server_cpu_s")
    ours = {c: r for c, r in s8.items() if c not in PEERS}
    for c, r in ours.items():
        line(
            "S8",
            c,
            "zero loss (and no duplicate)",
            f"lost {r.get('lost')}, dup {r.get('duplicated')}",
            r.get("lost") == 0 and r.get("duplicated") == 0,
        )
        mine = r.get("deliveries_per_server_cpu_s")
        if str(r.get("config", c)).startswith("daphne"):
            line(
                "S8",
                c,
                "deliveries per server CPU-s ≥ 1.0× sse-starlette's (Daphne)",
                f"{f(mine)} vs {f(star)} ({ratio(mine, star)})",
                None if not (mine and star) else mine >= star,
            )
    if ours:
        best, r = max(ours.items(), key=lambda kv: kv[1].get("deliveries_per_server_cpu_s") or 0)
        mine = r.get("deliveries_per_server_cpu_s")
        line(
            "S8",
            best,
            "best server: deliveries per server CPU-s ≥ 2.5× sse-starlette's",
            f"{f(mine)} vs {f(star)} ({ratio(mine, star)})",
            None if not (mine and star) else mine >= 2.5 * star,
        )
        line(
            "S8",
            best,
            "best server: deliveries per server CPU-s ≥ 0.5× the raw ceiling's",
            f"{f(mine)} vs {f(raw)} ({ratio(mine, raw)})",
            None if not (mine and raw) else mine >= 0.5 * raw,
        )
    s9_target_lines(rows, line)
    for r in s10_rows(rows):
        c, shape = r["config"], r.get("shape")
        if c in PEERS:
            continue
        st = r.get("storm") or {}
        line(
            "S10",
            c,
            f"{shape}: 0 lost, 0 duplicated",
            f"lost {r.get('lost')}, dup {r.get('duplicated')}",
            r.get("lost") == 0 and r.get("duplicated") == 0,
        )
        beyond = st.get("beyond_retry_max_s")
        line(
            "S10",
            c,
            f"{shape}: every client caught up ≤ 3 s after the server is back, beyond the retry "
            "delay",
            f"{f(beyond, 2)} s (catch-up max {f(st.get('catch_up_max_s'), 2)} s, retry "
            f"{f(st.get('retry_s'))} s; {f(st.get('caught_up_conns'))}/{f(r.get('streams'))} "
            "caught up)",
            None
            if beyond is None
            else beyond <= 3.0 and st.get("caught_up_conns") == r.get("streams"),
        )
        if shape == "restart":
            line(
                "S10",
                c,
                "restart: the server really restarted and every stream came back",
                f"pid {r.get('killed_pid')} → {r.get('restarted_pid')}, "
                f"{f(st.get('reconnected_conns'))} reconnected",
                bool(r.get("restarted")) and st.get("reconnected_conns") == r.get("streams"),
            )
    for c, r in by(rows, "S3-10k").items():
        if c in PEERS:
            continue
        at = f"at {f(r.get('streams'))} streams"
        kb = r.get("rss_per_stream_kb")
        line(
            "S3-10k",
            c,
            "RSS per idle stream ≤ 25 KB",
            f"{f(kb)} KB {at}",
            kb is not None and kb <= 25,
        )
        line(
            "S3-10k", c, "threads ≤ 10", f"{r.get('threads_held')}", r.get("threads_held", 99) <= 10
        )
        dbc = r.get("db_conns_held")
        # DB_THREADS is left at the app's default in the benchmarks: one on SQLite, four else.
        threads_db = 1 if "sqlite" in c else 4
        line(
            "S3-10k",
            c,
            f"DB connections ≤ the database threads' ({threads_db} here)",
            f"{dbc}",
            None if dbc is None else dbc <= threads_db,
        )
        line(
            "S3-10k",
            c,
            "every stream still open",
            f"{r.get('still_open')}/{r.get('streams')}",
            r.get("still_open") == r.get("streams"),
        )


def plots(rows: list[dict[str, Any]], plot_dir: Path, plt: Any) -> list[str]:
    made: list[str] = []
    s8 = by(rows, "S8")
    if s8:
        configs = list(s8)
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        colors = ["tab:gray" if c in PEERS else "tab:blue" for c in configs]
        axes[0].barh(configs, [s8[c].get("deliveries_per_s") or 0 for c in configs], color=colors)
        subs = max(r.get("subscribers") or 0 for r in s8.values())
        axes[0].set_title(f"deliveries/s ({subs:,} subscribers, publisher as fast as delivered)")
        axes[1].barh(
            configs, [s8[c].get("server_cpu_us_per_delivery") or 0 for c in configs], color=colors
        )
        axes[1].set_title("server CPU µs per delivery (lower is better; log scale)")
        axes[1].set_xscale("log")
        for ax in axes:
            ax.grid(True, axis="x", alpha=0.3)
            ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(plot_dir / "saturation.png", dpi=90)
        plt.close(fig)
        made.append("plots/saturation.png")
    storms = s10_rows(rows)
    if storms:
        fig, ax = plt.subplots(figsize=(9, 5))
        for r in storms:
            curve = (r.get("storm") or {}).get("curve") or []
            if not curve:
                continue
            ax.step(
                [t for t, _ in curve],
                [k for _, k in curve],
                where="post",
                label=f"{r['config']} {r.get('shape')}",
            )
        ax.set_xlabel("seconds since the server was back")
        ax.set_ylabel("connections caught up")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plot_dir / "storm.png", dpi=90)
        plt.close(fig)
        made.append("plots/storm.png")
    return made

"""Turn results JSON into RESULTS.md (tables, ratios to the peers, targets) and PNG plots.

python -m benchmarks.report [--results FILE ...] [--machine FILE] [--out RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
# Peers, and ours without DirectWriteMiddleware as a reference: ratios are taken to these.
PEERS = ["peer-starlette", "peer-naive-pubsub", "peer-eventstream", "peer-raw", "ref-plain"]
SHORT = {
    "peer-starlette": "starlette",
    "peer-naive-pubsub": "naive",
    "peer-eventstream": "eventstream",
    "peer-raw": "raw",
    "ref-plain": "plain",
}


def f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ratio(a: Any, b: Any) -> str:
    if not a or not b:
        return "–"
    return f"{a / b:.2f}×"


def load(paths: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in paths:
        if Path(p).exists():
            rows += json.loads(Path(p).read_text())["results"]
    return rows


def by(rows: list[dict[str, Any]], scenario: str) -> dict[str, dict[str, Any]]:
    return {r["config"]: r for r in rows if r.get("scenario") == scenario and "error" not in r}


FANOUT_COLS = [
    ("publish path", "publish_path"),
    ("conns", "connections"),
    ("expected", "expected"),
    ("received", "received"),
    ("lost", "lost"),
    ("dup", "duplicated"),
    ("p50 ms", "lat_p50_ms"),
    ("p95 ms", "lat_p95_ms"),
    ("p99 ms", "lat_p99_ms"),
    ("max ms", "lat_max_ms"),
    ("deliveries/s", "deliveries_per_s"),
    ("vs schedule p99 ms", "sched_lat_p99_ms"),
    ("server CPU s", "server_cpu_s"),
    ("client CPU s", "client_cpu_s"),
    ("RSS before MB", "rss_start_kb"),
    ("RSS subscribed MB", "rss_subscribed_kb"),
    ("threads", "threads_subscribed"),
    ("DB conns", "db_conns_subscribed"),
]


def cell(r: dict[str, Any], key: str) -> str:
    v = r.get(key)
    if key.endswith("_kb") and isinstance(v, (int, float)):
        return f"{v / 1024:.1f}"
    if key in ("server_cpu_s", "client_cpu_s") and isinstance(v, float):
        return f"{v:.2f}"
    return f(v)


def fanout_table(rows: list[dict[str, Any]], scenario: str, title: str) -> list[str]:
    got = by(rows, scenario)
    if not got:
        return []
    out = [f"### {title}", ""]
    head = (
        ["config"]
        + [c for c, _ in FANOUT_COLS]
        + ["pub rate asked", "pub rate achieved", "pub lag p99 ms", "publish call p50 ms"]
    )
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for config, r in got.items():
        p = r.get("publisher") or {}
        cells = (
            [config]
            + [cell(r, k) for _, k in FANOUT_COLS]
            + [
                f(p.get("rate_asked")) if p.get("rate_asked") else "max",
                f(p.get("rate_achieved")),
                f(p.get("lag_p99_ms")),
                f(p.get("publish_call_p50_ms"), 2),
            ]
        )
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    peers = [p for p in PEERS if p in got]
    ours = [c for c in got if c not in PEERS]
    if peers and ours:
        out.append(
            f"Ratios of ours to the peers in the same run ({scenario}): deliveries/s "
            "(higher is better) and p99 latency (lower is better)."
        )
        out.append("")
        head = (
            ["config"]
            + [f"deliv/s ÷ {SHORT[p]}" for p in peers]
            + [f"p99 ÷ {SHORT[p]}" for p in peers]
        )
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for c in ours:
            r = got[c]
            cells = (
                [c]
                + [ratio(r.get("deliveries_per_s"), got[p].get("deliveries_per_s")) for p in peers]
                + [ratio(r.get("lat_p99_ms"), got[p].get("lat_p99_ms")) for p in peers]
            )
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return out


def s3_table(
    rows: list[dict[str, Any]], scenario: str = "S3", title: str = "S3: idle streams held"
) -> list[str]:
    got = by(rows, scenario)
    if not got:
        return []
    out = [
        f"### {title}",
        "",
        "| config | streams | still open after hold | RSS before MB | RSS held MB | RSS per "
        "stream KB | threads | DB conns | time to open all s | server CPU to open s | server "
        "CPU while idle s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, r in got.items():
        out.append(
            "| "
            + " | ".join(
                [
                    c,
                    f(r.get("streams")),
                    f(r.get("still_open")),
                    f(r["curve"][0]["rss_kb"] / 1024),
                    f(r.get("rss_held_kb", 0) / 1024),
                    f(r.get("rss_per_stream_kb")),
                    f(r.get("threads_held")),
                    f(r.get("db_conns_held")),
                    f(r.get("open_all_seconds")),
                    f(r.get("server_cpu_open_s"), 2),
                    f(r.get("server_cpu_hold_s"), 2),
                ]
            )
            + " |"
        )
    out.append("")
    peers = [p for p in PEERS if p in got]
    ours = [c for c in got if c not in PEERS]
    if peers and ours:
        out.append("RSS per idle stream, ours ÷ peer (lower is better):")
        out.append("")
        out.append("| config | " + " | ".join(SHORT[p] for p in peers) + " |")
        out.append("|---|" + "---|" * len(peers))
        for c in ours:
            out.append(
                f"| {c} | "
                + " | ".join(
                    ratio(got[c].get("rss_per_stream_kb"), got[p].get("rss_per_stream_kb"))
                    for p in peers
                )
                + " |"
            )
        out.append("")
    return out


def s5_table(rows: list[dict[str, Any]]) -> list[str]:
    got = by(rows, "S5")
    if not got:
        return []
    out = [
        "### S5: replay of stored events to one new subscriber",
        "",
        "| config | events | received | lost | dup | replay s | events/s | RSS before MB | "
        "RSS peak MB | growth MB | server CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, r in got.items():
        out.append(
            "| "
            + " | ".join(
                [
                    c,
                    f(r.get("n")),
                    f(r.get("received")),
                    f(r.get("lost")),
                    f(r.get("duplicated")),
                    f(r.get("replay_seconds"), 2),
                    f(r.get("events_per_s")),
                    f(r.get("rss_before_kb", 0) / 1024),
                    f(r.get("rss_peak_kb", 0) / 1024),
                    f(r.get("rss_growth_kb", 0) / 1024),
                    f(r.get("server_cpu_s"), 2),
                ]
            )
            + " |"
        )
    out.append("")
    return out


def s6_table(rows: list[dict[str, Any]]) -> list[str]:
    got = by(rows, "S6")
    if not got:
        return []
    out = [
        "### S6: a task's tight loop of set_progress",
        "",
        "| config | publish path | updates | time in task s | of which loop s | rows written "
        "| last value delivered | last value latency ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, r in got.items():
        out.append(
            "| "
            + " | ".join(
                [
                    c,
                    r.get("publish_path", ""),
                    f(r.get("n")),
                    f(r.get("task_seconds"), 3),
                    f(r.get("loop_seconds"), 3),
                    f(r.get("rows_written")),
                    f(r.get("last_value_delivered")),
                    f(r.get("last_value_latency_ms")),
                ]
            )
            + " |"
        )
    out.append("")
    return out


def targets(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Targets",
        "",
        "| scenario | config | target | measured | result |",
        "|---|---|---|---|---|",
    ]
    s1 = by(rows, "S1")
    star = s1.get("peer-starlette", {}).get("deliveries_per_s")

    def line(s: str, c: str, t: str, m: str, ok: bool | None) -> None:
        out.append(
            f"| {s} | {c} | {t} | {m} | {'PASS' if ok else ('FAIL' if ok is not None else 'n/a')} |"
        )

    for c, r in s1.items():
        if c in PEERS:
            continue
        line(
            "S1",
            c,
            "zero loss (and no duplicate)",
            f"lost {r['lost']}, dup {r['duplicated']}",
            r["lost"] == 0 and r["duplicated"] == 0,
        )
        d = r.get("deliveries_per_s")
        line(
            "S1",
            c,
            "deliveries/s ≥ 1.0× sse-starlette",
            f"{f(d)} vs {f(star)} ({ratio(d, star)})",
            None if not (d and star) else d >= star,
        )
        p99 = r.get("lat_p99_ms")
        line("S1", c, "p99 ≤ 100 ms", f"{f(p99)} ms", None if p99 is None else p99 <= 100)
    for c, r in by(rows, "S3").items():
        if c in PEERS:
            continue
        at = f"at {f(r.get('streams'))} streams"
        line(
            "S3",
            c,
            "RSS per idle stream ≤ 30 KB",
            f"{f(r.get('rss_per_stream_kb'))} KB {at}",
            r.get("rss_per_stream_kb", 1e9) <= 30,
        )
        line("S3", c, "threads ≤ 10", f"{r.get('threads_held')}", r.get("threads_held", 99) <= 10)
        dbc = r.get("db_conns_held")
        line("S3", c, "DB connections ≤ 2", f"{dbc}", None if dbc is None else dbc <= 2)
        line(
            "S3",
            c,
            "every stream still open",
            f"{r.get('still_open')}/{r.get('streams')}",
            r.get("still_open") == r.get("streams"),
        )
    for c, r in by(rows, "S5").items():
        eps = r.get("events_per_s")
        line(
            "S5",
            c,
            "≥ 50,000 events/s replayed",
            f"{f(eps)} events/s of {f(r.get('n'))}",
            None if eps is None else eps >= 50000 and r.get("lost") == 0,
        )
        g = r.get("rss_growth_kb", 0) / 1024
        line(
            "S5",
            c,
            "flat memory (peak growth < 5 MiB; the payload is ~7 MB)",
            f"{g:.1f} MiB",
            g < 5,
        )
    for c, r in by(rows, "S6").items():
        t = r.get("task_seconds")
        line(
            "S6",
            c,
            "≤ 1 s in the task for the updates",
            f"{f(t, 3)} s for {f(r.get('n'))}",
            None if t is None else t <= 1.0,
        )
        line(
            "S6",
            c,
            "last value delivered",
            f"{r.get('last_value_received')}",
            bool(r.get("last_value_delivered")),
        )
    for c, r in by(rows, "S7").items():
        if c in PEERS:
            continue
        p50, p99 = r.get("lat_p50_ms"), r.get("lat_p99_ms")
        line("S7", c, "p50 ≤ 5 ms", f"{f(p50)} ms", None if p50 is None else p50 <= 5)
        line("S7", c, "p99 ≤ 50 ms", f"{f(p99)} ms", None if p99 is None else p99 <= 50)
    # Issue 14's scale scenarios (S8, S10, S3-10k).
    from benchmarks import report_scale

    report_scale.target_lines(rows, line)
    star_s2 = by(rows, "S2").get("peer-starlette", {}).get("deliveries_per_s")
    for c, r in by(rows, "S2b").items():
        line(
            "S2b",
            c,
            "zero loss (and no duplicate)",
            f"lost {r['lost']}, dup {r['duplicated']} of {f(r.get('expected'))}",
            r["lost"] == 0 and r["duplicated"] == 0,
        )
        if "-pg-" in c:
            eps = r.get("persisted_events_per_s")
            line(
                "S2b",
                c,
                "≥ 20,000 persisted events/s on PostgreSQL, ≥ 0.8× sse-starlette's S2",
                f"{f(eps)} events/s; {ratio(eps, star_s2)} of {f(star_s2)}",
                None if eps is None else eps >= 20000 and (star_s2 is None or eps >= 0.8 * star_s2),
            )
    out.append("")
    if any(r.get("quick") for r in rows):
        out.append("(Quick run: small N; the targets are defined for the full sizes.)")
        out.append("")
    return out


def failing(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(scenario, config) pairs with a FAIL line, one config per scenario (first found)."""
    seen: dict[str, str] = {}
    for line in targets(rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[4] == "FAIL" and cells[0] not in seen:
            seen[cells[0]] = cells[1]
    return list(seen.items())


def profiles(rows: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for r in rows:
        prof = r.get("profile")
        if not prof or "self" not in prof:
            continue
        if not out:
            out = ["## Profiles (py-spy, server process)", ""]
        out.append(
            f"### {r['scenario']} on {r['config']} ({prof['samples']} samples, "
            f"raw stacks: `{prof['file']}`)"
        )
        out.append("")
        out.append("Top frames by own time (% of samples):")
        out.append("")
        out += [f"- {p}% `{fr}`" for fr, p in prof["self"]]
        out.append("")
        out.append("Top frames by inclusive time:")
        out.append("")
        out += [f"- {p}% `{fr}`" for fr, p in prof["inclusive"]]
        out.append("")
    return out


def plots(rows: list[dict[str, Any]], plot_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(exist_ok=True)
    made: list[str] = []
    # 12+ series: one colour each (the default cycle has 10, and repeats).
    plt.rcParams["axes.prop_cycle"] = plt.cycler(color=plt.get_cmap("tab20").colors)
    series: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for r in rows:
        s = r.get("scenario", "")
        if "error" in r or not (s == "S1" or s.startswith("SWEEP-")):
            continue
        series.setdefault(r["config"], []).append((r.get("subscribers", 0), r))
    if series:
        fig, axes = plt.subplots(1, 3, figsize=(16, 5))
        for config, pts in sorted(series.items()):
            pts.sort(key=lambda x: x[0])
            xs = [x for x, _ in pts]
            style = "--" if config in PEERS else "-"
            axes[0].plot(xs, [r.get("lat_p50_ms") for _, r in pts], style, marker="o", label=config)
            axes[1].plot(xs, [r.get("lat_p99_ms") for _, r in pts], style, marker="o", label=config)
            axes[2].plot(
                xs, [r.get("deliveries_per_s") for _, r in pts], style, marker="o", label=config
            )
        for ax, title in zip(
            axes, ["latency p50 (ms)", "latency p99 (ms)", "deliveries/s"], strict=False
        ):
            ax.set_xlabel("subscribers (one job, 20 events/s)")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
        axes[1].set_yscale("log")
        axes[0].set_yscale("log")
        axes[2].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plot_dir / "fanout.png", dpi=90)
        plt.close(fig)
        made.append("plots/fanout.png")
    s3 = by(rows, "S3")
    if s3:
        fig, ax = plt.subplots(figsize=(8, 5))
        for config, r in sorted(s3.items()):
            curve = r["curve"]
            ax.plot(
                [p["streams"] for p in curve],
                [p["rss_kb"] / 1024 for p in curve],
                "--" if config in PEERS else "-",
                marker="o",
                label=config,
            )
        ax.set_xlabel("open idle streams")
        ax.set_ylabel("server RSS (MB)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plot_dir / "memory.png", dpi=90)
        plt.close(fig)
        made.append("plots/memory.png")
    # Issue 14's scale scenarios (S8, S10).
    from benchmarks import report_scale

    made += report_scale.plots(rows, plot_dir, plt)
    return made


def s2b_table(rows: list[dict[str, Any]]) -> list[str]:
    got = by(rows, "S2b")
    if not got:
        return []
    out = [
        "### S2b: bulk publishing (publish_many, one subscriber)",
        "",
        "| config | events | batch | persisted events/s | batch call p50 ms | p99 ms "
        "| received | lost | dup | latency p50 ms | p99 ms | publisher CPU s | server CPU s |",
        "|" + "---|" * 13,
    ]
    for config, r in got.items():
        p = r.get("publisher") or {}
        cells = [
            config,
            f(p.get("published")),
            f(r.get("batch")),
            f(p.get("persisted_events_per_s")),
            f(p.get("batch_call_p50_ms")),
            f(p.get("batch_call_p99_ms")),
            f(r.get("received")),
            f(r.get("lost")),
            f(r.get("duplicated")),
            f(r.get("lat_p50_ms")),
            f(r.get("lat_p99_ms")),
            f(p.get("publisher_cpu_s"), 2),
            cell(r, "server_cpu_s"),
        ]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", action="append")
    parser.add_argument("--machine", default=str(BENCH / "results" / "machine.md"))
    parser.add_argument("--notes", default=str(BENCH / "METHOD.md"))
    parser.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    parser.add_argument("--profile-results", action="append", default=[])
    parser.add_argument("--failing", action="store_true", help="print failing scenario/config")
    args = parser.parse_args()
    rows = load(args.results or [str(BENCH / "results" / "results.json")])
    if args.failing:
        for scenario, config in failing(rows):
            print(scenario, config)
        return 0
    md = ["# django_sse benchmarks", ""]
    if Path(args.machine).exists():
        md += [Path(args.machine).read_text(), ""]
    if Path(args.notes).exists():
        md += [Path(args.notes).read_text(), ""]
    md += targets(rows)
    findings = BENCH / "FINDINGS.md"
    if findings.exists():
        md += [findings.read_text(), ""]
    md += ["## Results", ""]
    md += fanout_table(rows, "S1", "S1: fan-out, one job, 20 events/s")
    md += fanout_table(rows, "S2", "S2: one subscriber, events as fast as the publisher goes")
    md += s2b_table(rows)
    md += s3_table(rows)
    md += fanout_table(rows, "S4", "S4: 100 subscribers, 200 events/s asked")
    md += s5_table(rows)
    md += s6_table(rows)
    md += fanout_table(rows, "S7", "S7: one subscriber, publisher in a separate process (Redis)")
    for s in sorted({r["scenario"] for r in rows if r.get("scenario", "").startswith("SWEEP")}):
        md += fanout_table(rows, s, f"{s}: fan-out sweep point")
    # Issue 14's scale scenarios (S8, S10, S3-10k).
    from benchmarks import report_scale

    md += report_scale.tables(rows)
    errors = [r for r in rows if "error" in r]
    if errors:
        md += ["## Runs that failed", ""]
        md += [f"- {r['scenario']} on {r['config']}: `{r['error'][:400]}`" for r in errors]
        md.append("")
    md += profiles(load(args.profile_results))
    made = plots(rows, BENCH / "plots")
    if made:
        md += ["## Plots", ""] + [f"![{m}]({m})" for m in made] + [""]
    Path(args.out).write_text("\n".join(md) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

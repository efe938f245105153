"""Arguments, output files and the text report of `agentcg bench isolation`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agentcg.core.errors import AgentcgError
from agentcg.core.intent import parse_size
from agentcg.devtools.isolation import (
    DEFAULT_STRATEGIES,
    RESERVE,
    STRATEGIES,
    Plan,
    isolation,
    start_daemon,
)
from agentcg.devtools.isolation_report import chart, render, summarize


def _size(text: str) -> int:
    try:
        return parse_size(text, "size")
    except AgentcgError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentcg bench isolation",
        description="1 HIGH + N LOW tenants replaying resources.json memory traces under "
        "one budget: no isolation, static per-tenant caps and agentcg, side by side.",
    )
    p.add_argument("traces", nargs="+", type=Path, help="trace dirs or resources.json; HIGH first")
    p.add_argument("--budget", type=_size, default=_size("1100M"), help="session budget")
    p.add_argument("--speed", default="50,10", help="replay speed-ups, one run set each")
    p.add_argument("--scale", type=float, default=1.0, help="trace memory times this")
    p.add_argument("--chunk", type=_size, default=_size("4M"), help="bytes per allocation")
    p.add_argument("--high-ask", type=_size, default=None, help="HIGH's ask [its peak]")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument(
        "--strategies",
        default=",".join(DEFAULT_STRATEGIES),
        help=f"comma-separated, of {', '.join(STRATEGIES)}",
    )
    p.add_argument("--no-bpf", action="store_true", help="agentcg with its fallback path")
    p.add_argument(
        "--detect-trials",
        type=int,
        default=0,
        help="also measure detection->action latency, BPF vs fallback",
    )
    p.add_argument("--out", type=Path, default=None, help="report dir [.cache/bench/iso-<time>]")
    return p


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    strategies = tuple(s for s in a.strategies.split(",") if s)
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        print(f"bench isolation: unknown strategies {sorted(unknown)}", file=sys.stderr)
        return 2
    out = a.out or Path(".cache/bench") / f"iso-{time.strftime('%Y%m%dT%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"bench isolation: {msg}", file=sys.stderr, flush=True)

    speeds = [float(x) for x in a.speed.split(",") if x]
    bpf = not a.no_bpf
    daemons = {}
    try:
        for name in strategies:
            if name in RESERVE:
                daemons[name] = start_daemon(out, bpf, log, RESERVE[name])
        if a.detect_trials and bpf and not daemons:
            daemons["agentcg"] = start_daemon(out, bpf, log)
    except BaseException:
        for d in daemons.values():
            d.remove()
        raise
    daemon = next(iter(daemons.values()), None)  # detection latency is measured on it
    reports: dict[str, dict[str, object]] = {}
    texts: list[str] = []
    try:
        for speed in speeds:
            plan = Plan(
                tuple(a.traces),
                a.budget,
                speed,
                a.scale,
                a.chunk,
                a.high_ask,
                strategies,
                a.runs,
                bpf,
            )
            report = isolation(plan, daemons, log)
            summary = summarize(report)
            report["summary"] = summary
            texts.append(render(report, summary))
            charts = [
                chart(report, r, out / f"{speed:g}x-run{r + 1}.png")
                for r in range(len(report["runs"]))
            ]
            if any(charts):
                texts.append("charts: " + ", ".join(str(c) for c in charts if c))
            else:
                texts.append("(no charts: pip install 'agentcg[bench]' for matplotlib)")
            reports[f"{speed:g}x"] = report
            # Saved and shown as each speed ends: a later failure keeps these.
            (out / "report.json").write_text(json.dumps(reports, indent=1) + "\n")
            print("\n\n".join(texts[-2:]) + "\n", flush=True)
        if a.detect_trials and daemon is not None and bpf:
            from agentcg.devtools.isolation_detect import detect_latency

            lat = detect_latency(daemon, out, a.detect_trials, log)
            reports["detection_latency"] = lat
            for path, x in lat.items():
                texts.append(
                    f"detection -> action ({path}): p50 {x['p50_ms']} ms, "
                    f"p99 {x['p99_ms']} ms, n={x['n']}"
                )
                print(texts[-1], flush=True)
    finally:
        for d in daemons.values():
            d.remove()  # its log stays in the report dir
    text = "\n\n".join(texts)
    (out / "report.json").write_text(json.dumps(reports, indent=1) + "\n")
    (out / "report.txt").write_text(text + "\n")
    print(f"saved {out}/report.json and report.txt")
    return 0

"""The report of `agentcg bench isolation`: per-strategy summaries (pure), the text
table, and a PNG chart of memory over time per tenant, one panel per strategy
(matplotlib, the optional ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentcg.devtools.benchstats import percentile

MB = 1000**2
MiB = 1024**2


def latency(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {q: round(percentile(values, p), 2) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}


def summarize(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per strategy: survival over all runs, HIGH and LOW latency (pooled over runs)
    and completion (mean of the survivors), and action counts."""
    out: dict[str, dict[str, Any]] = {}
    for run in report["runs"]:
        for name, tenants in run.items():
            s = out.setdefault(
                name,
                {"runs": 0, "survived": 0, "tenants": 0, "high_survived": 0, "lat": {}, "done": {}},
            )
            s["runs"] += 1
            for t in tenants:
                role = t["role"]
                s["tenants"] += 1
                s["survived"] += t["survived"]
                s["high_survived"] += role == "high" and t["survived"]
                s["lat"].setdefault(role, []).extend(t.get("latencies_ms", []))
                if t["survived"]:
                    s["done"].setdefault(role, []).append(t["completion_s"])
                for k in ("throttles", "freezes", "kills"):
                    s[k] = s.get(k, 0) + t.get(k, 0)
                if not t["survived"]:
                    s.setdefault("lost", []).append(f"{role} {t['trace']}: {t.get('why')}")
    for s in out.values():
        lat, done = s.pop("lat"), s.pop("done")
        for role in ("high", "low"):
            s[f"{role}_latency_ms"] = latency(lat.get(role, []))
            runs = done.get(role, [])
            s[f"{role}_completion_s"] = round(sum(runs) / len(runs), 3) if runs else None
    return out


def trace_name(path: str) -> str:
    """The task a trace belongs to: its directory's name for a resources.json."""
    p = Path(path)
    return p.parent.name if p.name == "resources.json" else p.name


def _pct(x: float | None, base: float | None) -> str:
    if x is None or not base:
        return "n/a"
    return f"{(x / base - 1) * 100:+.1f}%"


def render(report: dict[str, Any], summary: dict[str, dict[str, Any]]) -> str:
    plan = report["plan"]
    traces = ", ".join(trace_name(p) for p in plan["traces"])
    lines = [
        f"agentcg bench isolation: {len(plan['traces'])} tenants (HIGH first: {traces}), "
        f"budget {plan['budget'] / MB:.0f} MB, replay {plan['speed']:g}x, "
        f"memory x{plan['scale']:g}, "
        f"{len(report['runs'])} run(s), agentcg detection: {'bpf' if plan['bpf'] else 'events'}",
        "",
        f"{'strategy':<12}{'alive':>8}{'HIGH':>6}{'HIGH p50/p95/p99 ms':>24}"
        f"{'HIGH done s':>13}{'vs none':>9}{'LOW done s':>12}{'thr/frz/kill':>14}",
    ]
    base = summary.get("none", {}).get("high_completion_s")
    base_p95 = (summary.get("none", {}).get("high_latency_ms") or {}).get("p95")
    for name, s in summary.items():
        lat = s["high_latency_ms"]
        lat_s = "/".join(f"{lat[q]:.1f}" for q in ("p50", "p95", "p99")) if lat else "n/a"
        done = s["high_completion_s"]
        low = s["low_completion_s"]
        lines.append(
            f"{name:<12}{s['survived']:>4}/{s['tenants']:<3}{s['high_survived']:>3}/{s['runs']:<2}"
            f"{lat_s:>24}{done if done is not None else 'n/a':>13}{_pct(done, base):>9}"
            f"{low if low is not None else 'n/a':>12}"
            f"{s.get('throttles', 0):>6}/{s.get('freezes', 0)}/{s.get('kills', 0)}"
        )
    for name in ("agentcg", "agentcg-growth"):
        if base_p95 and name in summary and summary[name]["high_latency_ms"]:
            p95 = summary[name]["high_latency_ms"]["p95"]
            lines.append(f"{name} HIGH p95 allocation latency vs none: {_pct(p95, base_p95)}")
    for name, s in summary.items():
        for lost in s.get("lost", []):
            lines.append(f"  {name}: lost {lost}")
    return "\n".join(lines)


def chart(report: dict[str, Any], run: int, path: Path) -> Path | None:
    """Memory over time per tenant, one panel per strategy, for one run; None when
    matplotlib is not installed (pip install 'agentcg[bench]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    strategies = report["runs"][run]
    fig, axes = plt.subplots(1, len(strategies), figsize=(5 * len(strategies), 3.8), sharey=True)
    axes = axes if len(strategies) > 1 else [axes]
    budget = report["plan"]["budget"] / MiB
    for ax, (name, tenants) in zip(axes, strategies.items(), strict=True):
        for t in tenants:
            xs = [x for x, _ in t["series"]]
            ys = [y / MiB for _, y in t["series"]]
            label = f"{t['role'].upper()} {t['trace'][:18]}"
            label += "" if t["survived"] else " (killed)"
            (line,) = ax.plot(xs, ys, label=label, linewidth=1.2)
            if not t["survived"] and xs:
                ax.plot(xs[-1], ys[-1], "x", color=line.get_color(), markersize=9)
        ax.axhline(budget, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(name)
        ax.set_xlabel("seconds")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("memory.current (MiB)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

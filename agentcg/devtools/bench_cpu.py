"""`agentcg bench cpu`: agentcg's sched_ext scheduler against the kernel's default (fair)
scheduler, with the same cpu.weight values, side by side in one run.

- Latency: one high-priority, latency-sensitive call (a probe that sleeps 5 ms and
  measures how late it wakes, i.e. the wait from its timer firing until it runs, and
  the part of that it spent in a run queue) while CPU hogs (two per CPU) keep every
  CPU busy; p50/p95/p99 of both and the hogs' throughput (loop iterations per
  second). Two kinds of hogs: low-priority ones (``low``: cpu.weight alone separates
  them from the probe) and high-priority ones that are not latency-sensitive
  (``equal``: the same cpu.weight as the probe, so only the declared latency
  sensitivity tells them apart). Rounds alternate the two variants, the order
  rotating, so machine noise hits both alike.
- Weights: three hogs pinned to CPU 0 in cgroups with cpu.weight 100, 200, 300; the
  CPU-time share of each over a window, and the largest deviation from 1/6, 2/6, 3/6.

Both variants use the cgroups and cpu.weight the daemon would give those intents
(core.policy.decide); the agentcg variant also puts the workers on SCHED_EXT with the
class and slice core.sched.call_sched picks. Needs root, cgroup v2 with the cpu
controller, and sched_ext; loads the scheduler for the run unless a daemon already has.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

from agentcg.bpf import sched as scx
from agentcg.core.config import Config
from agentcg.core.intent import parse_intent
from agentcg.core.policy import decide
from agentcg.core.sched import call_sched, knobs
from agentcg.devtools import cpuload
from agentcg.devtools.benchstats import environment, percentile, progress, ratio
from agentcg.kernel.cgroup import Cgroup, find_cgroup2_mount

VARIANTS = ("fair", "agentcg")
LATENCY_INTENT = {"priority": "high", "latency_sensitive": True, "label": "probe"}
HOGS = {
    "low": {"priority": "low", "label": "hog"},
    "equal": {"priority": "high", "label": "hog"},
}
PERIOD_S = 0.005
WEIGHTS = (100, 200, 300)


@contextlib.contextmanager
def _scheduler(cfg: Config) -> Iterator[scx.Scheduler]:
    """The running agentcg scheduler (a daemon's), else one loaded for the run."""
    ks = scx.kernel_state()
    if ks.state == "unsupported":
        raise RuntimeError("this kernel has no sched_ext (CONFIG_SCHED_CLASS_EXT)")
    if ks.ours:
        yield scx.Scheduler()
        return
    if ks.state != "disabled":
        raise RuntimeError(f"another sched_ext scheduler ({ks.ops}) is loaded; unload it first")
    s = scx.Scheduler()
    s.load(knobs(cfg.sched), switch_all=False, keep_maps=False)
    try:
        yield s
    finally:
        s.unload()


@contextlib.contextmanager
def _leaves(base: Cgroup, names: list[str]) -> Iterator[dict[str, Cgroup]]:
    cgs = {n: base.child(f"{n}-{secrets.token_hex(2)}").create() for n in names}
    try:
        yield cgs
    finally:
        for cg in cgs.values():
            cg.remove_tree(kill=True, timeout=30)


def _latency_round(
    variant: str, hogs_of: str, base: Cgroup, s: scx.Scheduler, cfg: Config, samples: int
) -> dict[str, Any]:
    ext = variant == "agentcg"
    intents = {"lat": LATENCY_INTENT, "hog": HOGS[hogs_of]}
    with _leaves(base, list(intents)) as cgs:
        for name, raw in intents.items():
            intent = parse_intent(raw, cfg)
            cgs[name].set_cpu_weight(decide(intent, cfg, None).cpu_weight)
            if ext:
                s.set_call(cgs[name].cgroup_id, call_sched(intent, cfg))
        hogs = [cpuload.start(cgs["hog"], cpuload.hog, ext=ext) for _ in range(2 * _ncpus())]
        try:
            probe = cpuload.start(cgs["lat"], cpuload.probe(samples, PERIOD_S, 0.5), ext=ext)
            got = probe.result()
        finally:
            counts = [h.stop() for h in hogs]
        stats = s.call_stats(cgs["lat"].cgroup_id) if ext else None
        if ext:
            for cg in cgs.values():
                s.forget_call(cg.cgroup_id)
    return {
        "late_us": got["late_us"],
        "runq_us": got["runq_us"],
        "hog_rate": sum(n / secs for n, secs in counts if secs > 0),
        "sched": stats,
    }


def _weights(variant: str, base: Cgroup, window_s: float) -> dict[str, Any]:
    ext = variant == "agentcg"
    with _leaves(base, [f"w{w}" for w in WEIGHTS]) as cgs:
        for w in WEIGHTS:
            cgs[f"w{w}"].set_cpu_weight(w)
        hogs = [cpuload.start(cg, cpuload.hog, ext=ext, cpus={0}) for cg in cgs.values()]
        try:
            time.sleep(2)
            before = {n: cpuload.cpu_usage_us(cg) for n, cg in cgs.items()}
            time.sleep(window_s)
            after = {n: cpuload.cpu_usage_us(cg) for n, cg in cgs.items()}
        finally:
            for h in hogs:
                h.stop()
    shares = cpuload.shares(before, after)
    got = {w: round(shares[f"w{w}"], 4) for w in WEIGHTS}
    dev = max(abs(got[w] - w / sum(WEIGHTS)) for w in WEIGHTS)
    return {"shares": got, "max_deviation_points": round(dev * 100, 2)}


def _ncpus() -> int:
    return len(os.sched_getaffinity(0))


def _summary(late_us: list[float]) -> dict[str, float]:
    return {
        "n": len(late_us),
        "p50_ms": round(percentile(late_us, 50) / 1e3, 3),
        "p95_ms": round(percentile(late_us, 95) / 1e3, 3),
        "p99_ms": round(percentile(late_us, 99) / 1e3, 3),
    }


def _scenario(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of one kind of hogs from its rounds ({"variant", "late_us", ...})."""
    by = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    late = {v: _summary([x for r in by[v] for x in r["late_us"]]) for v in VARIANTS}
    runq = {v: _summary([x for r in by[v] for x in r["runq_us"]]) for v in VARIANTS}
    thr = {v: round(sum(r["hog_rate"] for r in by[v]) / len(by[v])) for v in VARIANTS}
    waits = [r["sched"] for r in by["agentcg"] if r["sched"]]
    return {
        "latency": late,
        "runqueue": runq,
        "hog_iterations_per_s": thr,
        "agentcg_probe_runqueue": {
            k: sum(w[k] for w in waits) for k in ("wait_us", "dispatches", "preempts")
        },
        "ratios": {
            "p99_fair_over_agentcg": ratio(late["fair"]["p99_ms"], late["agentcg"]["p99_ms"]),
            "p50_fair_over_agentcg": ratio(late["fair"]["p50_ms"], late["agentcg"]["p50_ms"]),
            "runq_p99_fair_over_agentcg": ratio(runq["fair"]["p99_ms"], runq["agentcg"]["p99_ms"]),
            "hog_throughput_agentcg_over_fair": ratio(thr["agentcg"], thr["fair"]),
        },
    }


def cpu(cfg: Config, rounds: int = 3, samples: int = 100, window_s: float = 10.0) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError("agentcg bench cpu needs root (it creates cgroups and loads BPF)")
    mount = find_cgroup2_mount()
    if mount is None or "cpu" not in Cgroup(mount).controllers():
        raise RuntimeError(
            "no cgroup v2 cpu controller here; run it in the test VM: "
            "scripts/vm-run -- .venv/bin/agentcg bench cpu"
        )
    top = Cgroup(mount)
    top.enable_controllers(["cpu"])
    base = top.child(f"agentcg-bench-cpu-{secrets.token_hex(3)}").create()
    base.enable_controllers(["cpu"])
    runs: dict[str, list[dict[str, Any]]] = {h: [] for h in HOGS}
    weights: dict[str, Any] = {}
    try:
        with _scheduler(cfg) as s:
            for r in range(rounds):
                order = VARIANTS[r % 2 :] + VARIANTS[: r % 2]
                for hogs_of in HOGS:
                    for v in order:
                        progress(f"latency round {r + 1}/{rounds}, {hogs_of} hogs: {v}")
                        res = _latency_round(v, hogs_of, base, s, cfg, samples)
                        runs[hogs_of].append({"variant": v, **res})
            for v in VARIANTS:
                progress(f"weights 100:200:300 on CPU 0: {v} ({window_s:g} s)")
                weights[v] = _weights(v, base, window_s)
    finally:
        base.remove_tree(kill=True, timeout=30)
    report: dict[str, Any] = {
        "bench": "cpu",
        "rounds": rounds,
        "samples_per_round": samples,
        "hogs": 2 * _ncpus(),
        "hog_intents": HOGS,
        "scenarios": {h: _scenario(runs[h]) for h in HOGS},
        "weights": weights,
        "environment": environment(),
    }
    report["text"] = format_report(report)
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"agentcg bench cpu: {r['rounds']} rounds x {r['samples_per_round']} wake-ups per "
        f"variant and kind of hogs, {r['hogs']} hogs; kernel {r['environment']['kernel']}",
    ]
    for hogs_of, sc in r["scenarios"].items():
        lines += [
            "",
            f"{hogs_of} hogs ({r['hog_intents'][hogs_of]['priority']} priority): "
            "wake-up lateness, and its run-queue part",
            f"{'variant':<10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
            f"{'rq p50':>9}{'rq p99':>9}{'hog it/s':>14}",
        ]
        for v in VARIANTS:
            a, q = sc["latency"][v], sc["runqueue"][v]
            lines.append(
                f"{v:<10}{a['p50_ms']:>9.2f}{a['p95_ms']:>9.2f}{a['p99_ms']:>9.2f}"
                f"{q['p50_ms']:>9.2f}{q['p99_ms']:>9.2f}{sc['hog_iterations_per_s'][v]:>14,}"
            )
        q = sc["ratios"]
        lines.append(
            f"p99 fair/agentcg {q['p99_fair_over_agentcg']}x (run queue "
            f"{q['runq_p99_fair_over_agentcg']}x), p50 {q['p50_fair_over_agentcg']}x; "
            f"hog throughput agentcg/fair {q['hog_throughput_agentcg_over_fair']}"
        )
    lines += ["", "weights 100:200:300 on one CPU (shares, largest deviation in points):"]
    for v in VARIANTS:
        w = r["weights"][v]
        shares = " ".join(f"{x:.3f}" for x in w["shares"].values())
        lines.append(f"  {v:<8} {shares}   {w['max_deviation_points']:.2f}")
    return "\n".join(lines)

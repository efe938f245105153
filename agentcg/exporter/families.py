"""A `stats` snapshot → Prometheus metric families; pure, built fresh on every scrape.

The snapshot is the result of the daemon's `stats` op (docs/protocol.md); every metric
is listed in docs/metrics.md. Base units throughout (seconds, bytes, ratios); labels
only from bounded sets (session names, configured tool kinds, op names, error codes,
action reasons), never call ids or pids.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

PREFIX = "agentcg_"
PRESSURE = (("memory", "some"), ("memory", "full"), ("cpu", "some"), ("cpu", "full"))


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=list(labels))


def _buckets(h: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Per-bucket counts (last one +Inf) → cumulative (le, count) pairs."""
    out, total = [], 0
    for le, n in zip([*h["le"], float("inf")], h["counts"], strict=True):
        total += n
        out.append((floatToGoString(le), float(total)))
    return out


def families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    yield from _session_families(snap.get("sessions", []))
    if "daemon" in snap:
        yield from _daemon_families(snap["daemon"], snap.get("version", ""))
    if "tools" in snap:
        yield from _tool_families(snap["tools"])


def _session_families(sessions: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    info = _gauge(
        "session_info",
        "An open session: its owner uid and container",
        ["session", "uid", "container"],
    )
    mem = _gauge("session_memory_bytes", "Memory charged to the session's cgroup", ["session"])
    peak = _gauge("session_memory_peak_bytes", "Peak memory of the session's cgroup", ["session"])
    budget = _gauge(
        "session_memory_budget_bytes", "Memory budget (memory.max) of the session", ["session"]
    )
    cpu = _counter("session_cpu_seconds", "CPU time used by the session's cgroup", ["session"])
    stall = _counter(
        "session_pressure_stall_seconds",
        "Time tasks of the session stalled on a resource (PSI total, some or full)",
        ["session", "resource", "kind"],
    )
    running = _gauge(
        "session_calls_running", "Tool calls of the session not yet ended", ["session"]
    )
    started = _counter("session_calls_started", "Tool calls begun in the session", ["session"])
    finished = _counter(
        "session_calls_finished",
        "Tool calls of the session ended, by outcome",
        ["session", "outcome"],
    )
    actions = _counter(
        "session_actions",
        "Throttle, freeze, thaw and kill actions on the session's calls, by reason",
        ["session", "action", "reason"],
    )
    for s in sessions:
        name, usage, counters = s["session"], s.get("usage", {}), s.get("counters", {})
        info.add_metric([name, _text(s.get("owner_uid")), s.get("container") or ""], 1)
        if "memory_current" in usage:
            mem.add_metric([name], usage["memory_current"])
        if usage.get("memory_peak") is not None:
            peak.add_metric([name], usage["memory_peak"])
        if s.get("memory") is not None:
            budget.add_metric([name], s["memory"])
        if "cpu_usage_s" in usage:
            cpu.add_metric([name], usage["cpu_usage_s"])
        for resource, kind in PRESSURE:
            value = usage.get("pressure", {}).get(resource, {}).get(kind)
            if value is not None:
                stall.add_metric([name, resource, kind], value)
        running.add_metric([name], len(s.get("calls", [])))
        started.add_metric([name], counters.get("calls_started", 0))
        for outcome, n in sorted(counters.get("calls_finished", {}).items()):
            finished.add_metric([name, outcome], n)
        for a in counters.get("actions", []):
            actions.add_metric([name, a["action"], a["reason"]], a["count"])
    yield from (info, mem, peak, budget, cpu, stall, running, started, finished, actions)


def _daemon_families(d: Mapping[str, Any], version: str) -> Iterator[Metric]:
    build = _gauge("build_info", "The daemon's version", ["version"])
    build.add_metric([version], 1)
    yield build
    g = _gauge("daemon_start_time_seconds", "When the daemon started, in seconds since the epoch")
    g.add_metric([], d["started"])
    yield g
    for name, key, doc in (
        ("sessions", "sessions", "Open sessions"),
        ("calls_running", "calls_running", "Tool calls not yet ended"),
        ("clients_connected", "clients", "Client connections to the daemon's socket"),
    ):
        g = _gauge(name, doc)
        g.add_metric([], d[key])
        yield g
    req = _counter("requests", "Requests answered, by op", ["op"])
    for op, n in sorted(d["requests"].items()):
        req.add_metric([op], n)
    errs = _counter(
        "request_errors", "Requests answered with an error, by op and code", ["op", "code"]
    )
    for e in d["errors"]:
        errs.add_metric([e["op"], e["code"]], e["count"])
    started = _counter("calls_started", "Tool calls begun")
    started.add_metric([], d["calls_started"])
    finished = _counter("calls_finished", "Tool calls ended, by outcome", ["outcome"])
    for outcome, n in sorted(d["calls_finished"].items()):
        finished.add_metric([outcome], n)
    actions = _counter(
        "actions", "Throttle, freeze, thaw and kill actions, by reason", ["action", "reason"]
    )
    for a in d["actions"]:
        actions.add_metric([a["action"], a["reason"]], a["count"])
    yield from (req, errs, started, finished, actions)
    latency = HistogramMetricFamily(
        PREFIX + "detection_to_action_seconds",
        "From the kernel's report of a memory event to the daemon's action on it",
        labels=["action"],
    )
    for action, h in sorted(d["detection_to_action_seconds"].items()):
        latency.add_metric([action], _buckets(h), h["sum"])
    yield latency
    yield from _bpf_families(d["bpf"], d["sched_ext"])


def _bpf_families(
    programs: Sequence[Mapping[str, Any]], scx: Mapping[str, Any]
) -> Iterator[Metric]:
    attached = _gauge(
        "bpf_program_attached", "1 if the BPF program is attached", ["program", "kind"]
    )
    events = _counter("bpf_program_events", "Events counted by a BPF program", ["program", "event"])
    for p in programs:
        attached.add_metric([p["name"], p["kind"]], 1 if p["attached"] else 0)
        for event, n in sorted(p["counters"].items()):
            events.add_metric([p["name"], event], n)
    yield from (attached, events)
    enabled = _gauge("sched_ext_enabled", "1 if agentcg's sched_ext scheduler is running")
    # The daemon's own state ("running", or "fallback: <why>", ...), not the kernel's:
    # another scheduler may hold sched_ext.
    agentcg = scx.get("agentcg") or ""
    enabled.add_metric([], 1 if agentcg.partition(":")[0] == "running" else 0)
    info = _gauge(
        "sched_ext_info", "The kernel's sched_ext state and the loaded scheduler", ["state", "ops"]
    )
    info.add_metric([scx["state"], scx.get("ops") or ""], 1)
    scx_events = _counter(
        "sched_ext_events", "Events counted by the sched_ext scheduler", ["event"]
    )
    for event, n in sorted(scx["counters"].items()):
        scx_events.add_metric([event], n)
    yield from (enabled, info, scx_events)


def _tool_families(tools: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    for key, doc in (
        ("duration_seconds", "Wall-clock duration of ended tool calls, by tool kind"),
        ("peak_memory_bytes", "Peak memory of ended tool calls, by tool kind"),
        ("memory_ask_ratio", "Peak memory over the memory asked for, of calls that asked"),
        ("sched_wait_seconds", "Run-queue wait of ended calls under agentcg's scheduler, total"),
        (
            "sched_max_wait_seconds",
            "Longest single run-queue wait of ended calls under agentcg's scheduler",
        ),
    ):
        fam = HistogramMetricFamily(PREFIX + "tool_call_" + key, doc, labels=["tool"])
        for tool, hists in sorted(tools.items()):
            if key in hists:  # an older daemon's snapshot may lack the newer histograms
                fam.add_metric([tool], _buckets(hists[key]), hists[key]["sum"])
        yield fam


def _text(v: Any) -> str:
    return "" if v is None else str(v)

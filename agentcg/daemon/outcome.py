"""A finished call's Outcome: its cgroup's final stats plus what the daemon saw."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from agentcg.core.model import Call
from agentcg.core.policy import Outcome, advise, suggested_memory
from agentcg.kernel.cgroup import Cgroup, CgroupError


def oom_reason(memory_events: dict[str, int]) -> str:
    """Why a call's processes were OOM-killed, from its memory.events: "oom" when the
    OOM was its own (memory.max), "pressure" when its session ran out of budget and the
    kernel took it first (its priority's oom_score_adj)."""
    return "oom" if memory_events.get("oom", 0) else "pressure"


def read_outcome(call: Call, cg: Cgroup, exit_status: int | None) -> Outcome:
    stats: dict[str, Any] = {"peak": 0, "cpu": {}, "mev": {}, "psi": 0}
    with contextlib.suppress(CgroupError, OSError):
        stats["peak"] = cg.memory_peak() or cg.memory_current()
        stats["cpu"] = cg.cpu_stat()
        stats["mev"] = cg.memory_events()
        stats["psi"] = int(cg.pressure("memory").get("some", {}).get("total", 0))
    mev = stats["mev"]
    oom_kills = max(mev.get("oom_kill", 0), call.oom_kills)
    killed = call.killed_reason or (oom_reason(mev) if oom_kills else None)
    outcome = Outcome(
        call=call.id,
        label=call.intent.label,
        exit_status=exit_status if exit_status is None or exit_status >= 0 else None,
        signal=-exit_status if exit_status is not None and exit_status < 0 else None,
        duration_s=round(time.time() - call.started, 3),
        peak_memory=stats["peak"],
        memory_requested=call.limits.memory_high,
        cpu_usage_us=stats["cpu"].get("usage_usec", 0),
        cpu_throttled_us=stats["cpu"].get("throttled_usec", 0),
        memory_high_events=max(mev.get("high", 0), call.high_events),
        oom_kills=oom_kills,
        pressure_some_us=stats["psi"],
        frozen=call.was_frozen,
        killed_reason=killed,
        advice=None,
    )
    outcome.advice = advise(outcome, call.limits, call.intent)
    outcome.suggested_memory = suggested_memory(outcome, call.limits)
    return outcome

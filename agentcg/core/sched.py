"""Pure decisions for agentcg's sched_ext scheduler: which class and time slice a call
gets from its intent, whether its tasks go on SCHED_EXT at all, the scheduler's knobs,
and when to try loading it again after it stopped. No I/O; tested on the host.

Classes (enum agentcg_sched_class in bpf/include/agentcg/sched.h), relative to the
configured default priority's cpu.weight:

    priority            latency_sensitive=false   latency_sensitive=true
    below the default   BATCH                     NORMAL
    default or above    NORMAL                    LATENCY

LATENCY: short slice, starts ahead in the queue when it wakes, preempts a running
non-LATENCY task. BATCH: long slice, no wake-up credit, never preempts. All classes
share CPU by cpu.weight; the class only changes who waits when.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentcg.core.config import Config
    from agentcg.core.intent import Intent
    from agentcg.core.policy import CallLimits

US = 1000  # ns
LATENCY_CREDIT_SLICES = 4  # a waking LATENCY task may start this many slices ahead
STABLE_S = 60.0  # a scheduler that ran this long starts the backoff from scratch


class SchedClass(IntEnum):
    NORMAL = 0
    LATENCY = 1
    BATCH = 2


@dataclass(frozen=True)
class SchedConfig:
    enabled: bool = True  # load the scheduler when the kernel has sched_ext
    switch_all: bool = False  # every task on the host, not only tool calls
    slice_us: int = 10_000  # NORMAL class, and tasks without settings
    latency_slice_us: int = 2_000
    batch_slice_us: int = 20_000
    reload_backoff_s: float = 1.0  # first retry after the scheduler stopped; doubles
    reload_backoff_max_s: float = 60.0


@dataclass(frozen=True)
class CallSched:
    klass: SchedClass
    slice_ns: int


@dataclass(frozen=True)
class SchedKnobs:
    """struct agentcg_sched_knobs: the scheduler's read-only settings."""

    slice_ns: int
    wake_credit_ns: int
    latency_credit_ns: int


def knobs(sc: SchedConfig) -> SchedKnobs:
    slice_ns = sc.slice_us * US
    return SchedKnobs(
        slice_ns=slice_ns,
        wake_credit_ns=slice_ns,
        latency_credit_ns=LATENCY_CREDIT_SLICES * slice_ns,
    )


def call_sched(intent: Intent, cfg: Config) -> CallSched:
    sc = cfg.sched
    weight = cfg.priorities[intent.priority].cpu_weight
    below = weight < cfg.priorities[cfg.call.default_priority].cpu_weight
    if below and not intent.latency_sensitive:
        return CallSched(SchedClass.BATCH, sc.batch_slice_us * US)
    if not below and intent.latency_sensitive:
        return CallSched(SchedClass.LATENCY, sc.latency_slice_us * US)
    return CallSched(SchedClass.NORMAL, sc.slice_us * US)


def runs_on_ext(limits: CallLimits, session_cpu: float | None, sc: SchedConfig) -> bool:
    """Whether the call's tasks are the scheduler's (and get its settings).

    The scheduler honours cpu.weight but does not enforce cpu.max, so a call capped
    in cores (its own intent.cpu or its session's cpu) stays on the fair class, which
    does, unless switch_all hands every task on the host to the scheduler.
    """
    capped = limits.cpu_max is not None or session_cpu is not None
    return sc.enabled and (sc.switch_all or not capped)


def needs_policy(limits: CallLimits, session_cpu: float | None, sc: SchedConfig) -> bool:
    """Whether the daemon puts the call's tool process on SCHED_EXT: with switch_all
    the scheduler takes every task without it."""
    return runs_on_ext(limits, session_cpu, sc) and not sc.switch_all


def reload_delay(failures: int, sc: SchedConfig) -> float:
    """Seconds to wait before the next load attempt after ``failures`` stops or failed
    loads in a row: reload_backoff_s, doubling, at most reload_backoff_max_s."""
    return min(sc.reload_backoff_max_s, sc.reload_backoff_s * 2 ** max(0, failures - 1))


def failures_after_stop(failures: int, ran_s: float) -> int:
    """The failure count once a loaded scheduler stopped after running ran_s seconds."""
    return 1 if ran_s >= STABLE_S else failures + 1

"""Pure policy: what limits a call gets, and what to tell the agent afterwards.

decide() turns a declared Intent into cgroup limits for one tool call; advise() turns a
finished call's Outcome into one or two plain sentences the agent can act on (retry
smaller, ask for more, or nothing at all). No I/O here, so both are tested on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentcg.core.errors import AgentcgError, LimitExceeded
from agentcg.core.intent import Intent

if TYPE_CHECKING:  # config imports the escalation module, which imports this one
    from agentcg.core.config import Config

PAGE = 4096
MiB = 1024**2
GiB = 1024**3
RETRY_STEP = 256 * MiB  # suggested retry sizes are rounded up to this
RETRY_FACTOR = 1.25  # suggested retry size = observed peak * this, rounded up
CPU_PERIOD_US = 100_000  # the kernel's default cpu.max period
MIN_CPU_QUOTA_US = 1000  # the kernel rejects cpu.max quotas below 1 ms
MAX_CPU_WEIGHT = 10_000

_IEC_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(n: int) -> str:
    """Human-readable IEC size: "512 B", "1.0 KiB", "13.5 MiB", "512 MiB", "1.9 GiB"."""
    if n < 0:
        raise ValueError(f"size must be >= 0; got {n}")
    if n < 1024:
        return f"{n} B"
    for i, unit in enumerate(_IEC_UNITS[1:], start=1):
        value = n / 1024**i
        # Decide the unit on the *rounded* value so 1023.97 MiB prints as 1.0 GiB.
        if round(value) < 1024 or unit == _IEC_UNITS[-1]:
            return f"{value:.1f} {unit}" if round(value, 1) < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def size_arg(n: int) -> str:
    """A size written the way a --memory flag takes it, rounded up: "2.5G", "768M"."""
    if n >= GiB and (n * 100) % GiB == 0:
        return f"{n / GiB:g}G"
    return f"{math.ceil(n / MiB)}M"


def retry_size(peak: int, at_least: int = 0) -> int:
    """Suggested memory for a retry: 1.25x the observed peak, rounded up to 256 MiB."""
    want = max(math.ceil(peak * RETRY_FACTOR), at_least, 1)
    return math.ceil(want / RETRY_STEP) * RETRY_STEP


def cpu_quota(cores: float) -> tuple[int, int]:
    """cpu.max for a limit in cores, clamped to the kernel's 1 ms minimum quota."""
    return max(MIN_CPU_QUOTA_US, math.ceil(cores * CPU_PERIOD_US)), CPU_PERIOD_US


def _page_up(n: float) -> int:
    return math.ceil(n / PAGE) * PAGE


def _page_down(n: float) -> int:
    return math.floor(n / PAGE) * PAGE


@dataclass(frozen=True)
class CallLimits:
    memory_high: int | None  # bytes; throttling starts here
    memory_max: int | None  # bytes; OOM kill above this
    memory_low: int  # bytes protected from reclaim
    cpu_weight: int
    cpu_max: tuple[int, int] | None  # (quota_us, period_us)
    pids_max: int | None
    timeout_s: float | None
    memory_min: int = 0  # bytes never reclaimed

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # flat fields: asdict's deep copy cost ~2% of the daemon


@dataclass(frozen=True)
class Committed:
    """What a session's running calls hold already: the sum of their asks (memory_high)
    and of their protection (memory_low)."""

    asks: int = 0
    protected: int = 0


def decide(
    intent: Intent, cfg: Config, session_budget: int | None, committed: Committed = Committed()
) -> CallLimits:
    """Limits for one call, or LimitExceeded (one line of advice) when it cannot start.

    An ask sizes the call's limits and protection; it is not a reservation. In a session
    with a memory budget the asks of its calls may add up to session.memory_overcommit
    times the budget (bursts rarely coincide; the escalation policy handles it when they
    do), but their protected amounts (memory.low) must fit the budget. No call's limits
    exceed the budget. An undeclared call gets the default size class, shrunk to what
    may still be promised.
    """
    prio = cfg.priorities.get(intent.priority)
    if prio is None:
        raise AgentcgError("invalid_value", f"unknown priority {intent.priority!r}")
    sized = _sized(intent, cfg, session_budget, committed)
    if isinstance(sized, str):
        raise LimitExceeded(sized)
    high, mmax = sized

    weight = prio.cpu_weight
    if intent.latency_sensitive:
        # Short interactive calls should win CPU contention against batch calls of the
        # same priority; doubling keeps the priority ordering mostly intact.
        weight = min(weight * 2, MAX_CPU_WEIGHT)

    cpu_max = None if intent.cpu is None else cpu_quota(intent.cpu)

    return CallLimits(
        memory_high=high,
        memory_max=mmax,
        memory_low=0 if high is None else _page_down(high * prio.memory_low_fraction),
        cpu_weight=weight,
        cpu_max=cpu_max,
        pids_max=intent.pids,
        timeout_s=intent.timeout if intent.timeout is not None else cfg.call.default_timeout_s,
        memory_min=0 if high is None else _page_down(high * prio.memory_min_fraction),
    )


def admission_blocker(
    intent: Intent, cfg: Config, session_budget: int | None, committed: Committed
) -> str | None:
    """Why the call cannot start in its session now (one line of advice), or None."""
    sized = _sized(intent, cfg, session_budget, committed)
    return sized if isinstance(sized, str) else None


def _sized(
    intent: Intent, cfg: Config, budget: int | None, committed: Committed
) -> tuple[int | None, int | None] | str:
    """(memory_high, memory_max) of the call, or why it cannot start."""
    ask = intent.memory
    if ask is None and cfg.call.default_memory_class is not None:
        ask = cfg.size_classes[cfg.call.default_memory_class]
    if budget is None:
        return ask, None if ask is None else _page_up(ask * cfg.call.memory_headroom)
    label = intent.label
    promise = int(budget * cfg.session.memory_overcommit)
    allowance = promise - committed.asks
    if intent.memory is not None and intent.memory > budget:
        return (
            f"{label} asks for {format_size(intent.memory)} but the session's whole memory "
            f"budget is {format_size(budget)}: ask for --memory {size_arg(budget // MiB * MiB)} "
            "or less, or open the session with a larger --memory."
        )
    if (intent.memory is not None and intent.memory > allowance) or allowance < PAGE:
        what = f"asks for {format_size(intent.memory)}" if intent.memory else "cannot start"
        fix = ""
        if allowance >= MiB:
            fix = f"ask for --memory {size_arg(allowance // MiB * MiB)} or less, "
        return (
            f"{label} {what} but the session's running calls already ask for "
            f"{format_size(committed.asks)} of the {format_size(promise)} it may promise "
            f"({cfg.session.memory_overcommit:g}x its {format_size(budget)} budget): "
            f"wait for running calls to end, {fix}or open the session with a larger --memory."
        )
    # The ceiling comes from the ask as given (or the default size). An undeclared
    # call's default shrinks to what may still be promised, but only as its
    # memory.high, the point where the daemon looks at it: a hard cap made of whatever
    # the calls before it left would kill a call that fits the budget.
    mmax = budget if ask is None else min(budget, _page_up(ask * cfg.call.memory_headroom))
    if ask is not None:
        ask = min(ask, budget, allowance)
    prio = cfg.priorities[intent.priority]
    low = 0 if ask is None else _page_down(ask * prio.memory_low_fraction)
    if committed.protected + low > budget:
        return (
            f"{label} would protect {format_size(low)} of memory ({intent.priority} priority) "
            f"but the session's running calls already protect {format_size(committed.protected)} "
            f"of its {format_size(budget)} budget: wait for running calls to end, ask for "
            "less memory or a lower priority, or open the session with a larger --memory."
        )
    return ask, mmax


KILL_REASONS = ("oom", "timeout", "disconnect", "session_closed", "pressure", "admin")


@dataclass
class Outcome:
    call: str
    label: str
    exit_status: int | None  # exit code when the tool exited
    signal: int | None  # signal number when it was killed by one
    duration_s: float
    peak_memory: int  # bytes, memory.peak of the call's cgroup
    memory_requested: int | None  # bytes, the memory_high the call ran with
    cpu_usage_us: int
    cpu_throttled_us: int
    memory_high_events: int  # memory.events "high": times reclaim was forced at memory.high
    oom_kills: int
    pressure_some_us: int  # memory.pressure "some" total stall time during the call
    frozen: bool
    killed_reason: str | None  # one of KILL_REASONS, None when the tool ended by itself
    advice: str | None = None
    suggested_memory: int | None = None  # bytes a retry should ask for, after an OOM
    sched: dict[str, int] | None = None  # agentcg's CPU scheduler: run/wait/dispatches

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # flat fields: asdict's deep copy cost ~2% of the daemon


def _narrower(label: str, reason: str) -> str:
    """What to try instead, specialised by the call's label."""
    words = set(label.replace("_", "-").replace(".", "-").split("-"))
    if "test" in label or words & {"tox", "nox", "unittest"}:
        return "run a narrower test selection (e.g. one test file or -k EXPR)"
    if reason == "timeout":
        return "split the work into smaller steps"
    if "cargo" in words:
        return "build with fewer parallel jobs (cargo build -j 2)"
    if words & {"make", "ninja", "cmake"}:
        return "use fewer parallel jobs (e.g. make -j2)"
    if words & {"pip", "uv", "poetry"}:
        return "use fewer parallel jobs (install one package at a time, MAKEFLAGS=-j2 for builds)"
    if words & {"npm", "yarn", "pnpm", "node"}:
        return "use fewer parallel jobs (install or build one package at a time)"
    if words & {"build", "compile", "gradle", "mvn", "go", "bazel"}:
        return "use fewer parallel jobs (e.g. -j2)"
    return "run a narrower command (process less input at once)"


def suggested_memory(outcome: Outcome, limits: CallLimits) -> int | None:
    """What a retry should ask for when the call ran out of memory, else None.

    The peak of an OOM-killed call is its limit, not its need, so the suggestion
    is at least one step above the old ask; an agent may need a few retries.
    """
    if outcome.killed_reason not in ("oom", None) or (
        outcome.killed_reason is None and outcome.oom_kills == 0
    ):
        return None
    ask = outcome.memory_requested if outcome.memory_requested is not None else limits.memory_high
    return retry_size(outcome.peak_memory, (ask or 0) + RETRY_STEP)


def advise(outcome: Outcome, limits: CallLimits, intent: Intent) -> str | None:
    """Plain-language feedback for the agent, or None when there is nothing to say."""
    o = outcome
    label = o.label
    ask = o.memory_requested if o.memory_requested is not None else limits.memory_high
    peak = o.peak_memory
    # "its medium (1.0 GiB) ask" / "its 1.0 GiB ask" / "its 1.2 GiB limit"
    its = ""
    if ask is not None:
        size = format_size(ask)
        its = (
            f"its {intent.memory_class} ({size}) ask" if intent.memory_class else f"its {size} ask"
        )
    elif limits.memory_max is not None:
        its = f"its {format_size(limits.memory_max)} limit"
    of_its = f" of {its}" if its else ""
    duration_us = max(o.duration_s, 0.0) * 1e6
    parts: list[str] = []

    if o.killed_reason == "oom" or (o.oom_kills > 0 and o.killed_reason is None):
        sugg = size_arg(suggested_memory(o, limits) or 0)
        if o.killed_reason == "oom":
            head = f"{label} used {format_size(peak)}{of_its} and was OOM-killed"
        else:
            n = o.oom_kills
            head = (
                f"{label} used {format_size(peak)}{of_its} and had {n} "
                f"process{'es' if n != 1 else ''} OOM-killed, so its output may be incomplete"
            )
        parts.append(f"{head}: {_narrower(label, 'oom')} or ask for --memory {sugg}.")
        if ask is not None and limits.memory_max is not None and limits.memory_max <= ask:
            parts.append(
                f"The session's memory budget capped this call at "
                f"{format_size(limits.memory_max)}; let other calls finish or open the "
                "session with a larger --memory."
            )
    elif o.killed_reason == "timeout":
        t = limits.timeout_s
        limit = f"its {t:g} s timeout" if t is not None else "its timeout"
        longer = f"--timeout {math.ceil(t * 2)}" if t is not None else "a longer --timeout"
        parts.append(
            f"{label} was killed after reaching {limit}: {_narrower(label, 'timeout')} "
            f"or ask for {longer}."
        )
    elif o.killed_reason == "disconnect":
        parts.append(
            f"{label} was killed because the connection that began it closed before call.end: "
            "keep that connection open until the tool finishes."
        )
    elif o.killed_reason == "pressure":
        how = "was paused and then killed" if o.frozen else "was killed"
        parts.append(
            f"{label} {how} when its session ran out of its memory budget (the kernel "
            "takes the lowest-priority calls first, to keep higher-priority ones running): "
            "retry it when the other calls have finished, or open the session with a "
            "larger --memory."
        )
    elif o.killed_reason == "session_closed":
        parts.append(f"{label} was killed because its session was closed while it ran.")
    elif o.killed_reason == "admin":
        parts.append(f"{label} was killed by an administrator.")

    killed = o.killed_reason is not None
    # Throttling only matters when it cost real time: >= 100 ms and >= 10% of the run.
    stalled = o.pressure_some_us >= max(100_000, 0.1 * duration_us)
    if not killed and o.oom_kills == 0 and o.memory_high_events > 0 and stalled and ask:
        parts.append(
            f"{label} was slowed by memory reclaim for {o.pressure_some_us / 1e6:.1f} s of "
            f"{o.duration_s:.1f} s at {its} (peak {format_size(peak)}); "
            f"ask for --memory {size_arg(retry_size(max(peak, ask)))} to run faster."
        )
    # CPU throttling matters when the quota held the call back for a quarter of a run of
    # at least a second.
    cpu_bound = duration_us >= 1e6 and o.cpu_throttled_us >= 0.25 * duration_us
    if not killed and limits.cpu_max is not None and cpu_bound:
        cores = limits.cpu_max[0] / limits.cpu_max[1]
        parts.append(
            f"{label} was CPU-throttled for {o.cpu_throttled_us / 1e6:.1f} s of "
            f"{o.duration_s:.1f} s at its {cores:g}-core limit; ask for --cpu "
            f"{cores * 2:g} if it is on the critical path."
        )
    if o.frozen and not killed:
        parts.append(
            f"{label} was paused while the host was short of memory and then resumed, so it "
            "took longer than it needed to."
        )
    lean = retry_size(peak)
    if not parts and ask and intent.memory is not None and peak * 4 <= ask and ask - lean >= GiB:
        # Over-asking by a GiB or more costs other agents room on the host; say so.
        parts.append(
            f"{label} peaked at {format_size(peak)}{of_its}; --memory {size_arg(lean)} "
            "would be enough and leaves room for other agents."
        )
    return " ".join(parts) or None

"""What the daemon counts for the `stats` op: counters, histograms, bounded labels.

Pure bookkeeping, no I/O: the daemon calls the ``record``-style methods of
``DaemonStats`` from its loop and ``snapshot()`` builds the counters' half of a
`stats` result (the daemon adds what it reads from cgroupfs). Every label value is
drawn from a fixed set here or in the config, so an agent cannot mint series: tool
labels outside ``metrics.tool_kinds`` count as "other", call ids and pids are never
labels. The exporter (agentcg.exporter) turns a snapshot into Prometheus families.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentcg.core.policy import Outcome

MiB = 1024**2
GiB = 1024**3

# Bucket upper bounds (the +Inf bucket is implicit). Tool calls last from tens of
# milliseconds (git) to many minutes (test suites); bursts are 0.5-4 GiB.
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
PEAK_MEMORY_BUCKETS = tuple(
    float(n)
    for n in (16 * MiB, 64 * MiB, 128 * MiB, 256 * MiB, 512 * MiB, GiB, 2 * GiB, 4 * GiB, 8 * GiB)
)
ASK_RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)
# A call's run-queue wait under agentcg's scheduler: in total, and its longest single wait.
SCHED_WAIT_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
# From the kernel's report (inotify wake-up, BPF event) to the daemon's action done.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

OTHER = "other"
DEFAULT_TOOL_KINDS = (
    "tool",
    "bash",
    "python",
    "pytest",
    "pip",
    "npm",
    "node",
    "git",
    "make",
    "cargo",
    "go",
    "gcc",
)

# The daemon's actions on a call or session, and why. Counters for every pair start
# at zero so dashboards show them before the first event.
ACTIONS: Mapping[str, tuple[str, ...]] = {
    # call_memory_high: the kernel forced reclaim at a call's memory.high (counted per
    # memory.events "high" increment); room_for_higher: the daemon lowered a call's
    # memory.high to keep room for higher-priority calls
    "throttle": ("call_memory_high", "room_for_higher"),
    # a call over its ask with nothing reclaimable got its memory.max as memory.high
    "raise": ("over_ask",),
    "freeze": ("room_for_higher",),
    "thaw": ("room_back", "restored"),
    "kill": ("oom", "timeout", "disconnect", "session_closed", "pressure", "owner_gone"),
}
# How a call ended: by itself ("ok": exit 0, "failed": another status or a signal,
# "unknown": not reported) or killed by the daemon or the kernel (the kill reason).
OUTCOMES = (
    "ok",
    "failed",
    "unknown",
    "oom",
    "timeout",
    "disconnect",
    "session_closed",
    "pressure",
    "owner_gone",
    "admin",
)
RECENT_ACTIONS = 64


def tool_kind(label: str, kinds: Iterable[str]) -> str:
    """The metric label for a call's intent label: itself if configured, else "other"."""
    return label if label in kinds else OTHER


def sees_everything(
    *,
    admin: bool,
    confined: bool,
    uid: int,
    gid: int,
    reader_uids: Iterable[int],
    reader_gids: Iterable[int],
) -> bool:
    """Whether a `stats` peer sees every session: admins, and metrics readers that run
    outside any container or session (a reader's uid inside one is still an agent)."""
    return admin or (not confined and (uid in reader_uids or gid in reader_gids))


def call_outcome(killed_reason: str | None, exit_status: int | None, signal: int | None) -> str:
    if killed_reason is not None:
        return killed_reason if killed_reason in OUTCOMES else "admin"
    if exit_status is None and signal is None:
        return "unknown"  # the agent ended the call without saying how the tool exited
    return "ok" if exit_status == 0 else "failed"


@dataclass
class Histogram:
    """Fixed buckets; ``counts`` has one entry per bound plus the +Inf bucket."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def to_dict(self) -> dict[str, Any]:
        return {"le": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


@dataclass
class ToolHistograms:
    duration_seconds: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS_S))
    peak_memory_bytes: Histogram = field(default_factory=lambda: Histogram(PEAK_MEMORY_BUCKETS))
    memory_ask_ratio: Histogram = field(default_factory=lambda: Histogram(ASK_RATIO_BUCKETS))
    sched_wait_seconds: Histogram = field(default_factory=lambda: Histogram(SCHED_WAIT_BUCKETS_S))
    sched_max_wait_seconds: Histogram = field(
        default_factory=lambda: Histogram(SCHED_WAIT_BUCKETS_S)
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration_seconds": self.duration_seconds.to_dict(),
            "peak_memory_bytes": self.peak_memory_bytes.to_dict(),
            "memory_ask_ratio": self.memory_ask_ratio.to_dict(),
            "sched_wait_seconds": self.sched_wait_seconds.to_dict(),
            "sched_max_wait_seconds": self.sched_max_wait_seconds.to_dict(),
        }


@dataclass
class SessionCounters:
    calls_started: int = 0
    calls_finished: Counter[str] = field(default_factory=Counter)
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls_started": self.calls_started,
            "calls_finished": dict(self.calls_finished),
            "actions": _action_list(self.actions),
        }


def _names(views: Iterable[Mapping[str, Any]]) -> list[str]:
    return [v["session"] for v in views]


def _action_list(actions: Mapping[tuple[str, str], int]) -> list[dict[str, Any]]:
    return [{"action": a, "reason": r, "count": n} for (a, r), n in sorted(actions.items())]


@dataclass
class BpfProgram:
    kind: str  # "tracepoint", "struct_ops", ...
    attached: bool
    counters: dict[str, int] = field(default_factory=dict)


class DaemonStats:
    """Everything the daemon counts between scrapes; sessions that close are dropped.

    The BPF loaders report through ``set_bpf_program`` and ``set_sched_ext`` (call
    them again whenever the state or a counter changes). Actions are counted from the
    events the daemon publishes (agentcg.daemon.stats); code that acts on a kernel
    report also calls ``observe_latency`` with the report's ``time.monotonic()``.
    """

    def __init__(
        self,
        tool_kinds: Iterable[str] = DEFAULT_TOOL_KINDS,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tool_kinds = frozenset(tool_kinds)
        self._clock = clock
        self._monotonic = monotonic
        self.started = clock()
        self.clients = 0
        self.requests: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.calls_started = 0
        self.calls_finished: Counter[str] = Counter({o: 0 for o in OUTCOMES})
        self.actions: Counter[tuple[str, str]] = Counter(
            {(a, r): 0 for a, reasons in ACTIONS.items() for r in reasons}
        )
        self.latency: dict[str, Histogram] = {}
        self.tools: dict[str, ToolHistograms] = {}
        self.sessions: dict[str, SessionCounters] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_ACTIONS)
        self._high_seen: dict[str, int] = {}  # call id -> memory.high events counted
        self._oom_seen: set[str] = set()  # calls whose OOM kill was counted
        self.bpf: dict[str, BpfProgram] = {}
        self.sched_ext: dict[str, Any] = {
            "state": "unsupported",
            "ops": None,
            "agentcg": None,
            "counters": {},
        }

    # ------------------------------------------------------------ recording

    def request(self, op: str, code: str | None) -> None:
        """One request answered; ``code`` None on success. Unknown ops count as "unknown"."""
        self.requests[op] += 1
        if code is not None:
            self.errors[(op, code)] += 1

    def session_opened(self, name: str) -> None:
        self.sessions.setdefault(name, SessionCounters())

    def session_closed(self, name: str) -> None:
        self.sessions.pop(name, None)

    def call_started(self, session: str) -> None:
        self.calls_started += 1
        self.session_opened(session)
        self.sessions[session].calls_started += 1

    def call_ended(self, session: str, outcome: Outcome) -> None:
        """A call's final Outcome: its result, its histograms, and the kernel's
        memory.high throttle events of the call (counted from its memory.events)."""
        self.throttled(session, outcome.call, outcome.memory_high_events)
        self._high_seen.pop(outcome.call, None)
        if outcome.oom_kills:  # the kernel's event may not have come yet
            reason = "pressure" if outcome.killed_reason == "pressure" else "oom"
            self.oom_killed(session, outcome.call, reason)
        self._oom_seen.discard(outcome.call)
        result = call_outcome(outcome.killed_reason, outcome.exit_status, outcome.signal)
        self.calls_finished[result] += 1
        if session in self.sessions:
            self.sessions[session].calls_finished[result] += 1
        hist = self.tools.setdefault(tool_kind(outcome.label, self.tool_kinds), ToolHistograms())
        hist.duration_seconds.observe(outcome.duration_s)
        hist.peak_memory_bytes.observe(outcome.peak_memory)
        if outcome.memory_requested:
            hist.memory_ask_ratio.observe(outcome.peak_memory / outcome.memory_requested)
        if outcome.sched:  # it ran on agentcg's scheduler, which counted its waits
            hist.sched_wait_seconds.observe(outcome.sched.get("wait_us", 0) / 1e6)
            hist.sched_max_wait_seconds.observe(outcome.sched.get("max_wait_us", 0) / 1e6)

    def throttled(self, session: str, call: str, memory_high_events: int) -> None:
        """The call's memory.events "high" count so far; the increase is counted."""
        new = memory_high_events - self._high_seen.get(call, 0)
        if new > 0:
            self._high_seen[call] = memory_high_events
            self.action(session, "throttle", "call_memory_high", call=call, count=new)

    def oom_killed(self, session: str, call: str, reason: str = "oom") -> None:
        """The kernel OOM-killed the call (memory.oom.group: all of it); counted once.
        ``reason``: "oom" at its own memory.max, "pressure" when its session ran out."""
        if call not in self._oom_seen:
            self._oom_seen.add(call)
            self.action(session, "kill", reason, call=call)

    def action(
        self,
        session: str,
        action: str,
        reason: str,
        *,
        call: str | None = None,
        count: int = 1,
    ) -> None:
        """The daemon (or the kernel, for throttle and oom) acted on a call or session."""
        if reason not in ACTIONS.get(action, ()):
            raise ValueError(f"unknown action/reason {action}/{reason}")
        self.actions[(action, reason)] += count
        if session in self.sessions:
            self.sessions[session].actions[(action, reason)] += count
        self.recent.append(
            {
                "time": round(self._clock(), 3),
                "session": session,
                "call": call,
                "action": action,
                "reason": reason,
                "count": count,
            }
        )

    def observe_latency(self, action: str, detected_at: float) -> None:
        """``action`` just completed in answer to a kernel report seen at ``detected_at``
        (``time.monotonic()``; for a BPF event, its bpf_ktime_get_ns() / 1e9)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action}")
        hist = self.latency.setdefault(action, Histogram(LATENCY_BUCKETS_S))
        hist.observe(max(0.0, self._monotonic() - detected_at))

    def set_bpf_program(
        self, name: str, *, kind: str, attached: bool, counters: Mapping[str, int] | None = None
    ) -> None:
        self.bpf[name] = BpfProgram(kind, attached, dict(counters or {}))

    def set_sched_ext(
        self,
        state: str,
        *,
        ops: str | None = None,
        agentcg: str | None = None,
        counters: Mapping[str, int] | None = None,
    ) -> None:
        """``state`` as /sys/kernel/sched_ext/state says (enabled, disabled, ...) or
        "unsupported"; ``ops`` the scheduler's name when one is loaded; ``agentcg`` what
        the daemon's scheduler is doing and, when it is not running, why (one line)."""
        self.sched_ext = {
            "state": state,
            "ops": ops,
            "agentcg": agentcg,
            "counters": dict(counters or {}),
        }

    # ------------------------------------------------------------ reading

    def snapshot(
        self,
        sessions: Iterable[Mapping[str, Any]],
        *,
        everything: bool,
        version: str,
        open_sessions: int,
        calls_running: int,
    ) -> dict[str, Any]:
        """The `stats` result: ``sessions`` are the daemon's views of the sessions the
        peer may see (usage read from cgroupfs), to which their counters are added;
        daemon-wide figures and tool histograms only when the peer sees ``everything``."""
        views = [
            {**s, "counters": self.sessions.get(s["session"], SessionCounters()).to_dict()}
            for s in sessions
        ]
        snap: dict[str, Any] = {
            "version": version,
            "time": self._clock(),
            "scope": "all" if everything else "own",
            "sessions": views,
            "recent_actions": self.recent_actions(None if everything else _names(views)),
        }
        if everything:
            snap["daemon"] = {
                **self.daemon_view(),
                "sessions": open_sessions,
                "calls_running": calls_running,
            }
            snap["tools"] = self.tools_view()
        return snap

    def recent_actions(self, sessions: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The last actions, oldest first; only those of ``sessions`` when given."""
        keep = None if sessions is None else set(sessions)
        return [dict(a) for a in self.recent if keep is None or a["session"] in keep]

    def daemon_view(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "clients": self.clients,
            "requests": dict(self.requests),
            "errors": [
                {"op": op, "code": code, "count": n}
                for (op, code), n in sorted(self.errors.items())
            ],
            "calls_started": self.calls_started,
            "calls_finished": dict(self.calls_finished),
            "actions": _action_list(self.actions),
            "detection_to_action_seconds": {a: h.to_dict() for a, h in self.latency.items()},
            "bpf": [
                {"name": n, "kind": p.kind, "attached": p.attached, "counters": dict(p.counters)}
                for n, p in sorted(self.bpf.items())
            ],
            "sched_ext": {**self.sched_ext, "counters": dict(self.sched_ext["counters"])},
        }

    def tools_view(self) -> dict[str, Any]:
        return {kind: h.to_dict() for kind, h in sorted(self.tools.items())}

"""Sessions and tool calls as plain data: no timers, no connections, no I/O.

The daemon keeps one Session per cgroup under <root>/sessions/ and one Call per leaf
under a session's tools/. Both round-trip through the state records (``record()`` out,
``*_from_record`` back in) so a restarted daemon can re-authorize their owners.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agentcg.core.intent import Intent
from agentcg.core.policy import CallLimits

LIVE_STATES = ("pending", "running")


@dataclass
class Session:
    name: str
    owner_uid: int | None  # None: recovered without a record; admin only
    container: str | None  # a label for people and grants; never decides ownership
    memory: int | None
    cpu: float | None
    pids: int | None
    max_calls: int
    created: float
    adopted: dict[str, str] = field(default_factory=dict)  # pid -> cgroup it came from
    home: str | None = None  # cgroup the session nests under; None: <root>/sessions
    default: bool = False  # its owner's default session in that home
    limit: int | None = None  # memory.max when no budget was planned (memory None)
    owner_pid: int | None = None  # the process that opened it (the session GC watches it)
    owner_start: int | None = None  # its start time, so a recycled pid is not it
    calls: set[str] = field(default_factory=set)

    @property
    def budget(self) -> int | None:
        """The session's memory.max: its planned budget, else its cap."""
        return self.memory if self.memory is not None else self.limit

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("calls")
        return d


@dataclass
class Call:
    id: str
    session: str
    token: str
    owner_uid: int
    owner_pid: int
    intent: Intent
    limits: CallLimits
    started: float
    state: str = "pending"  # pending -> running -> ended ("exited" when shown, all gone)
    killed_reason: str | None = None
    high_events: int = 0
    oom_kills: int = 0
    frozen_at: float | None = None  # monotonic time of the freeze, while frozen
    was_frozen: bool = False

    @property
    def live(self) -> bool:
        """Still running and not already condemned."""
        return self.state in LIVE_STATES and self.killed_reason is None

    def record(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "token": self.token,
            "owner_uid": self.owner_uid,
            "owner_pid": self.owner_pid,
            "intent": dict(vars(self.intent)),
            "limits": self.limits.to_dict(),
            "started": self.started,
        }


def session_from_record(rec: dict[str, Any]) -> Session | None:
    try:
        return Session(**rec)
    except TypeError:  # a record from another version: recover it as unowned
        return None


def call_from_record(call_id: str, rec: dict[str, Any]) -> Call | None:
    try:
        return Call(
            id=call_id,
            session=rec["session"],
            token=rec["token"],
            owner_uid=rec["owner_uid"],
            owner_pid=rec["owner_pid"],
            intent=Intent(**rec["intent"]),
            limits=limits_from_record(rec["limits"]),
            started=rec["started"],
            state="running",
        )
    except (KeyError, TypeError, IndexError):  # unusable: its call cannot be given back
        return None


def limits_from_record(d: dict[str, Any]) -> CallLimits:
    cpu_max = d["cpu_max"]
    return CallLimits(
        memory_high=d["memory_high"],
        memory_max=d["memory_max"],
        memory_low=d["memory_low"],
        cpu_weight=d["cpu_weight"],
        cpu_max=(int(cpu_max[0]), int(cpu_max[1])) if cpu_max else None,
        pids_max=d["pids_max"],
        timeout_s=d["timeout_s"],
        memory_min=d.get("memory_min", 0),
    )

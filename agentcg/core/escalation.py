"""Memory escalation in a session, as one pure decision: a snapshot in, actions out.

Snapshot -> decide -> act: whenever the kernel reports memory trouble in a session (or
a call begins or ends, or on a short tick while a call is held back), the daemon reads
a Snapshot of the session and its calls, ``decide`` says what to do, and the daemon
does it (agentcg/daemon/escalation.py). Nothing here does I/O.

The rules:

1. **A call stuck over its own ask is resolved at once.** Over its memory.high with
   nothing left to reclaim, the kernel would let it sleep in the memory.high penalty
   for ever (memory.high never OOM-kills). Its memory.high goes up to its memory.max,
   where it either fits or meets a real OOM that takes the whole call
   (memory.oom.group); a call already at its ceiling is killed.
2. **Priorities act only between ranks** (a priority's kill_order). Calls of the top
   rank running in the session are never throttled or frozen. A lower-ranked call may
   grow only into the room the session's budget leaves after what is kept for
   higher-ranked calls: its own memory.high is lowered to a tripwire at its usage plus
   its share of that room (throttled). Reaching the tripwire with no room left, it is
   frozen; as soon as the room is back it is thawed with a new tripwire; once nothing
   ranks above it, its own limits come back. What is kept for a higher call is, with
   ``reserve = "ask"`` (the default), the whole unused part of its memory.high; with
   ``reserve = "growth"``, what it would grow at its recent rate within the horizon (at
   least one step, at most the unused part of its memory.high; all of that until its
   growth has been measured over a whole window): lower calls are not held back for a
   peak that may never come while the higher call idles, but one that grew while it
   idled holds memory a later burst of it needs, and the kernel then OOM-kills it
   (docs/benchmarks.md, the 300 MiB run).
3. **At the budget, the kernel decides.** When the session's charges fail at its budget
   the kernel's OOM killer runs within milliseconds; the daemon steers it with
   oom_score_adj by priority, so a lower-ranked call dies only when the alternative is
   an OOM in the session, and before any higher-ranked one (freezing then would only
   slow the victim's exit). While the session is at its budget nothing is thawed.
   There is no kill on a timer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from agentcg.core.policy import format_size

MiB = 1024**2


@dataclass(frozen=True)
class MemoryConfig:
    """The [memory] config section: how memory trouble is detected and handled."""

    bpf: bool = True  # load the in-kernel detector (bpf/memwatch.bpf.c) when possible
    step: int = 16 * MiB  # Tuning.step
    thaw_room: int = 32 * MiB  # Tuning.thaw_room
    recheck_s: float = 0.05  # while a call is held back: how often to look for room
    psi_stall_us: int = 20_000  # without BPF: a call stalled this long on memory ...
    psi_window_us: int = 200_000  # ... within this window is checked at once
    recheck_max_s: float = 1.0  # recheck_s, then doubling while nothing changes, up to this
    reserve: str = "ask"  # kept for higher calls: "ask" (all they may claim) or "growth"
    reserve_horizon_s: float = 2.0  # "growth": this many seconds of it

    def tuning(self) -> Tuning:
        horizon = self.reserve_horizon_s if self.reserve == "growth" else None
        return Tuning(step=self.step, thaw_room=self.thaw_room, reserve_horizon_s=horizon)


@dataclass(frozen=True)
class CallSnapshot:
    call: str
    rank: int  # kill_order of the call's priority: higher ranks are protected
    usage: int  # memory.current, bytes
    high: int | None  # memory.high in force; None: "max"
    own_high: int | None  # the call's own memory.high: its ask, or its memory.max once raised
    max: int | None  # memory.max
    frozen: bool
    stuck: bool  # reported over its memory.high with reclaim freeing nothing, since last time
    # Bytes per second it is growing, as the daemon measured it; None: not measured over
    # a whole window yet (a call just begun, or just recovered).
    growth: int | None = 0

    @property
    def throttled(self) -> bool:
        """Held below its own memory.high by the daemon (a tripwire)."""
        return held_below(self.high, self.own_high)


def held_below(high: int | None, own: int | None) -> bool:
    """memory.high in force (None: "max") is below the call's own."""
    return high is not None and (own is None or high < own)


@dataclass(frozen=True)
class Snapshot:
    session: str
    budget: int | None  # the session's memory.max; None: no budget
    usage: int  # the session's memory.current (agent and calls)
    at_limit: bool  # charges are failing at the budget, since last time
    calls: tuple[CallSnapshot, ...]


@dataclass(frozen=True)
class Tuning:
    step: int  # smallest share of room worth a tripwire; below it a stuck call is frozen
    thaw_room: int  # share of room a frozen call needs before it is thawed
    # Kept for a higher call: its growth over this many seconds (None: its whole claim).
    reserve_horizon_s: float | None = None


class Act(Enum):
    SET_HIGH = "set_high"
    FREEZE = "freeze"
    THAW = "thaw"
    KILL = "kill"


class Reason(Enum):
    OVER_ASK = "over_ask"  # stuck over its own memory.high: raised to memory.max
    AT_CEILING = "at_ceiling"  # stuck at its memory.max already: killed
    ROOM_FOR_HIGHER = "room_for_higher"  # the room is what higher-ranked calls may claim
    ROOM_BACK = "room_back"  # room came back
    RESTORED = "restored"  # nothing ranks above it any more


@dataclass(frozen=True)
class Action:
    act: Act
    call: str
    reason: Reason
    memory_high: int | None = None  # SET_HIGH: the new memory.high (None: "max")
    detail: str = ""  # one line with the numbers, for the log and the call's event


def _size(n: int | None) -> str:
    return "max" if n is None else format_size(n)


def _claim(c: CallSnapshot) -> int:
    """How far a call may still grow on its own terms (0: unknown, no limit)."""
    limit = c.own_high if c.own_high is not None else c.max
    return 0 if limit is None else max(0, limit - c.usage)


def _reserve(c: CallSnapshot, t: Tuning) -> int:
    """What a higher-ranked call keeps from lower ones."""
    claim = _claim(c)
    if t.reserve_horizon_s is None or c.growth is None:
        return claim
    return min(claim, max(t.step, int(c.growth * t.reserve_horizon_s)))


def next_recheck(previous: float | None, changed: bool, base: float, most: float) -> float:
    """Seconds until a session with held-back calls is looked at again: ``base`` after
    a report or an action, doubling while decisions change nothing, up to ``most``
    (room that comes back by itself is seen a little later, and an idle daemon does not
    poll cgroupfs 20 times a second)."""
    if changed or previous is None:
        return base
    return max(base, min(previous * 2, most))


def at_rest(calls: Iterable[tuple[int, bool, int | None, int | None]], t: Tuning) -> bool:
    """Whether decide() has nothing to do in a session whatever its memory use, so the
    daemon need not read it: no call stuck and the session not at its limit (the caller
    checks those reports), and its calls, as (rank, frozen, memory.high in force, own
    memory.high), all of one rank, none frozen or held below its own memory.high. Not
    with the "growth" reserve, whose windows are measured at each look."""
    if t.reserve_horizon_s is not None:
        return False
    ranks = set()
    for rank, frozen, high, own in calls:
        if frozen or held_below(high, own):
            return False
        ranks.add(rank)
    return len(ranks) <= 1


def decide(s: Snapshot, t: Tuning) -> list[Action]:
    """What to do in session ``s`` now; actions for one call come in the order to run."""
    out: list[Action] = []
    if not s.calls:
        return out
    top = max(c.rank for c in s.calls)
    done: set[str] = set()
    for c in s.calls:
        if c.stuck and not c.frozen and not c.throttled:
            out.append(_resolve_over_ask(c))
            done.add(c.call)
    rest = [c for c in s.calls if c.call not in done]
    if s.budget is None:
        for c in rest:
            out += _restore(c, Reason.RESTORED)
        return out
    lower = sorted((c for c in rest if c.rank < top), key=lambda c: (c.rank, -c.usage))
    for c in rest:
        if c.rank == top:
            out += _restore(c, Reason.RESTORED)
    running = sum(1 for c in lower if not c.frozen)
    for c in lower:
        reserve = sum(_reserve(d, t) for d in s.calls if d.rank > c.rank and not d.frozen)
        room = s.budget - s.usage - reserve
        if c.frozen:
            share = max(0, room) // (running + 1)
            if share >= t.thaw_room and not s.at_limit:
                detail = f"{_size(room)} of room came back ({_size(reserve)} kept for higher)"
                out.append(_tripwire(c, share, Reason.ROOM_BACK, detail))
                out.append(Action(Act.THAW, c.call, Reason.ROOM_BACK, detail=detail))
            continue
        share = max(0, room) // running
        if c.stuck:
            if share >= t.step:
                detail = f"{_size(share)} of room for it ({_size(reserve)} kept for higher)"
                out.append(_tripwire(c, share, Reason.ROOM_BACK, detail))
            else:
                detail = (
                    f"at {_size(c.usage)} with {_size(max(0, room))} of room left "
                    f"({_size(reserve)} kept for higher-priority calls)"
                )
                out.append(Action(Act.FREEZE, c.call, Reason.ROOM_FOR_HIGHER, detail=detail))
        else:
            out += _hold(c, share, reserve)
    return out


def _resolve_over_ask(c: CallSnapshot) -> Action:
    if c.high is not None and (c.max is None or c.high < c.max):
        return Action(
            Act.SET_HIGH,
            c.call,
            Reason.OVER_ASK,
            memory_high=c.max,
            detail=(
                f"at {_size(c.usage)}, over its {_size(c.high)} memory.high with nothing "
                f"reclaimable: memory.high raised to its memory.max ({_size(c.max)})"
            ),
        )
    return Action(
        Act.KILL,
        c.call,
        Reason.AT_CEILING,
        detail=f"at {_size(c.usage)}, its ceiling ({_size(c.max)}), with nothing reclaimable",
    )


def _restore(c: CallSnapshot, reason: Reason) -> list[Action]:
    out = []
    if c.throttled:
        out.append(
            Action(
                Act.SET_HIGH,
                c.call,
                reason,
                memory_high=c.own_high,
                detail=f"memory.high back to its own {_size(c.own_high)}",
            )
        )
    if c.frozen:
        out.append(Action(Act.THAW, c.call, reason, detail="no higher-priority call needs room"))
    return out


def _tripwire(c: CallSnapshot, share: int, reason: Reason, detail: str) -> Action:
    """memory.high at usage + share, or the call's own when that is lower."""
    target = c.usage + share
    if c.own_high is not None and target >= c.own_high:
        target = c.own_high
    return Action(Act.SET_HIGH, c.call, reason, memory_high=target, detail=detail)


def _hold(c: CallSnapshot, share: int, reserve: int) -> list[Action]:
    """A running lower-ranked call that is not stuck: lower its tripwire when it could
    grow past its share; give its own limits back when its whole ask fits. A tripwire
    below the share stays until the call reaches it (then it is stuck and re-decided)."""
    target = c.usage + share
    if c.own_high is not None and target >= c.own_high:
        return _restore(c, Reason.ROOM_BACK)
    if c.high is None or c.high > target:
        detail = (
            f"may grow by {_size(share)} from {_size(c.usage)} "
            f"({_size(reserve)} kept for higher-priority calls)"
        )
        return [
            Action(Act.SET_HIGH, c.call, Reason.ROOM_FOR_HIGHER, memory_high=target, detail=detail)
        ]
    return []

"""The escalation decision for a session nearing its memory budget, as pure functions.

Snapshot -> decide -> act: the daemon reads a snapshot of the session and its calls,
these functions say what to do, and the daemon carries it out. Step 1 (throttling at
the session's memory.high) is the kernel's; step 2 freezes the lowest-priority call;
step 3 thaws it when memory comes back or kills it once the grace has run out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from agentcg.core.policy import RunningCall, pick_victim

THAW_BELOW = 0.9  # thaw once session memory falls under this fraction of memory.high


class Step(Enum):
    THAW = "thaw"
    KILL = "kill"
    WAIT = "wait"


@dataclass(frozen=True)
class FrozenCall:
    call: str
    frozen_at: float  # monotonic


def freeze_victim(calls: list[RunningCall]) -> str | None:
    """On a new memory.high event: the call to freeze, or None.

    One step at a time: while a call is frozen, the pending check decides what comes
    next, so nothing more is frozen.
    """
    if any(c.frozen for c in calls):
        return None
    return pick_victim(calls)


def after_freeze(
    frozen: list[FrozenCall],
    memory_current: int,
    memory_high: int | None,
    now: float,
    grace_s: float,
) -> list[tuple[str, Step]]:
    """For each frozen call: thaw (memory came back), kill (grace over) or wait."""
    steps: list[tuple[str, Step]] = []
    for f in frozen:
        if memory_high is None or memory_current < THAW_BELOW * memory_high:
            steps.append((f.call, Step.THAW))
        elif now - f.frozen_at >= grace_s:
            steps.append((f.call, Step.KILL))
        else:
            steps.append((f.call, Step.WAIT))
    return steps

"""Which sessions to close because their owner is gone; pure.

A session is in use while it has tool calls, the process that opened it still runs,
an adopted agent is in its agent/ leaf, its home has processes (a container's own),
or its owner (same uid and home) has a connection open. One that stays unused for the
grace is closed; one whose cgroup disappeared (its container was removed, taking the
subtree along) at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SessionUse:
    name: str
    exists: bool  # its cgroup is still there
    in_use: bool


def sweep(
    uses: Iterable[SessionUse], idle_since: Mapping[str, float], now: float, grace: float
) -> tuple[list[str], dict[str, float]]:
    """The sessions to close now, and the idle marks to keep for the next sweep."""
    close, idle = [], {}
    for u in uses:
        if not u.exists:
            close.append(u.name)
        elif not u.in_use:
            since = idle_since.get(u.name, now)
            if now - since >= grace:
                close.append(u.name)
            else:
                idle[u.name] = since
    return close, idle

"""Caps no agent can talk its way around, as pure decisions.

A session's budget never exceeds what the cgroups above it allow nor a configured share
of it; priorities more favourable than the default are granted, not chosen; the memory
protection agentcg claims is bounded. The daemon reads the numbers from cgroupfs
(memory.max and pids.max of every ancestor, the host's MemTotal) and these functions
decide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from agentcg.core.config import Config, Grant
from agentcg.core.errors import AgentcgError
from agentcg.core.policy import format_size


def session_memory(cfg: Config, ask: int | None, available: int) -> tuple[int | None, int]:
    """(budget, limit) of a new session: the budget is what calls are planned against
    (its ask, else session.default_memory or max_memory, else None: unplanned), the
    limit is its memory.max, which is never above the cap, so not asking never means
    "unlimited".

    `available` is the memory where the session lives: the host's, or the lowest
    memory.max of the cgroups above it. An explicit ask above the cap is refused; a
    configured default above it is lowered to it.
    """
    s = cfg.session
    cap = max(1, int(available * s.max_memory_fraction))
    if s.max_memory is not None:
        cap = min(cap, s.max_memory)
    if ask is not None:
        if ask > cap:
            raise AgentcgError(
                "limit_exceeded",
                f"session memory {format_size(ask)} exceeds the cap {format_size(cap)} "
                f"(session.max_memory, or {s.max_memory_fraction:g} of the "
                f"{format_size(available)} available where the session lives); ask for less",
            )
        return ask, ask
    budget = s.default_memory or s.max_memory
    if budget is None:
        return None, cap
    return min(budget, cap), min(budget, cap)


def session_pids(cfg: Config, ask: int | None, available: int | None) -> int:
    """The session's pids.max: never above session.max_pids nor an ancestor's pids.max."""
    cap = cfg.session.max_pids if available is None else min(cfg.session.max_pids, available)
    if ask is not None:
        if ask > cap:
            raise AgentcgError(
                "limit_exceeded",
                f"session pids {ask} exceeds the cap {cap} (session.max_pids or a pids.max "
                "above the session); ask for less",
            )
        return ask
    return min(cfg.session.default_pids, cap)


def privileged(cfg: Config, priority: str) -> bool:
    """More favourable than call.default_priority in any way an agent could exploit."""
    base, p = cfg.priorities[cfg.call.default_priority], cfg.priorities[priority]
    return (
        p.cpu_weight > base.cpu_weight
        or p.memory_low_fraction > base.memory_low_fraction
        or p.kill_order > base.kill_order
    )


def granted(grant: Grant | None, uid: int, gids: Iterable[int], label: str | None) -> bool:
    if grant is None:
        return False
    return (
        uid in grant.uids
        or any(g in grant.gids for g in gids)
        or (label is not None and label in grant.containers)
    )


def check_priority(
    cfg: Config,
    priority: str,
    admin: Callable[[], bool],
    uid: int,
    gids: Iterable[int],
    label: str | None,
) -> None:
    """Raise unless the peer may use `priority` (admins and grantees may use any);
    `admin` is asked only for a priority above the default."""
    if not privileged(cfg, priority) or admin():
        return
    if granted(cfg.grants.get(priority), uid, gids, label):
        return
    raise AgentcgError(
        "unauthorized",
        f"priority {priority!r} is above {cfg.call.default_priority!r} and needs a grant "
        f"([grants] {priority} in the daemon's config); use {cfg.call.default_priority!r}",
    )


def protection_budget(cfg: Config, host_memory: int, root_max: int | None) -> int:
    """memory.low for the daemon's root: its share of the host or of its own budget."""
    base = host_memory if root_max is None else min(host_memory, root_max)
    return int(base * cfg.daemon.protection_fraction)


def agent_connections(cfg: Config) -> int:
    """Connections agents may hold together; the rest are kept for admins."""
    d = cfg.daemon
    return max(1, d.max_connections - d.admin_connections)

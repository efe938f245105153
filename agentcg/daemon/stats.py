"""The `stats` op and the counting behind it.

Actions are counted from the events the daemon publishes on its bus (killed, oom,
frozen, thawed, throttled), so the code that acts needs no metrics calls; outcomes
come from Ending, latencies from whoever answers a kernel report. The reply adds
what cgroupfs says now (memory, CPU, pressure) to the counters (core.metrics).
"""

from __future__ import annotations

import contextlib
from typing import Any

from agentcg import __version__
from agentcg.core import authz
from agentcg.core.errors import AgentcgError
from agentcg.core.metrics import ACTIONS, sees_everything
from agentcg.core.model import Session
from agentcg.daemon.registry import Connection, Registry
from agentcg.daemon.views import session_view
from agentcg.kernel.cgroup import CgroupError

US = 1_000_000


class Stats:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        reg.bus.subscribe(self.on_event)

    def on_event(self, name: str, call_id: str, data: dict[str, Any]) -> None:
        call = self.reg.calls.get(call_id)
        session = call.session if call else ""
        stats = self.reg.stats
        if name == "throttled":
            stats.action(session, "throttle", data["reason"], call=call_id)
        elif name == "limit_raised":
            stats.action(session, "raise", data["reason"], call=call_id)
        elif name == "oom" or (name == "killed" and data["reason"] in ("oom", "pressure")):
            # The kernel's OOM kill, seen as the daemon's kill at the ceiling, as the
            # "oom" event, and in the outcome: one kill, counted once.
            stats.oom_killed(session, call_id, data.get("reason", "oom"))
        elif name == "killed" and data["reason"] in ACTIONS["kill"]:
            stats.action(session, "kill", data["reason"], call=call_id)
        elif name == "frozen":
            stats.action(session, "freeze", data["reason"], call=call_id)
        elif name == "thawed":
            stats.action(session, "thaw", data["reason"], call=call_id)

    async def stats(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        reg, peer = self.reg, conn.peer
        where = reg.locate(peer)
        admin = reg.is_admin(peer)
        everything = sees_everything(
            admin=admin,
            confined=peer.container is not None or where.session is not None,
            uid=peer.uid,
            gid=peer.gid,
            reader_uids=reg.cfg.metrics.reader_uids,
            reader_gids=reg.cfg.metrics.reader_gids,
        )
        name = args.get("session")
        if name is not None:
            sess = reg.sessions.get(name)
            if sess is None:
                raise AgentcgError("not_found", f"no session {name!r}; `agentcg status` lists them")
            if not everything:
                authz.authorize_session(peer, where, lambda: admin, sess)
            visible = [sess]
        else:
            visible = [s for s in reg.sessions.values() if everything or self._may(conn, s)]
        return reg.stats.snapshot(
            [_stats_view(reg, s) for s in visible],
            everything=everything,
            version=__version__,
            open_sessions=len(reg.sessions),
            calls_running=len(reg.calls),
        )

    def _may(self, conn: Connection, sess: Session) -> bool:
        peer = conn.peer
        try:
            authz.authorize_session(peer, self.reg.locate(peer), lambda: False, sess)
        except AgentcgError:
            return False
        return True


def _stats_view(reg: Registry, sess: Session) -> dict[str, Any]:
    view = session_view(reg, sess)
    view["created"] = sess.created
    scg = reg.layout.session(sess.name)
    usage = view["usage"]
    with contextlib.suppress(CgroupError, OSError):
        usage["cpu_usage_s"] = scg.cpu_stat().get("usage_usec", 0) / US
    pressure: dict[str, dict[str, float]] = {}
    for resource in ("memory", "cpu"):
        with contextlib.suppress(CgroupError, OSError):
            psi = scg.pressure(resource)
            pressure[resource] = {k: psi[k]["total"] / US for k in ("some", "full") if k in psi}
    usage["pressure"] = pressure
    return view


def status_line(reg: Registry) -> str:
    """The one line `systemctl status agentcg` shows (sd_notify STATUS)."""
    return f"{len(reg.sessions)} sessions, {len(reg.calls)} tool calls, {reg.stats.clients} clients"

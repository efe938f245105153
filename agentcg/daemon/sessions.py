"""Sessions: hello, open (with adoption), close, status, list."""

from __future__ import annotations

import logging
import time
from typing import Any

from agentcg import __version__
from agentcg.core import authz, caps
from agentcg.core.errors import AgentcgError
from agentcg.core.model import Session
from agentcg.core.protocol import negotiate_version
from agentcg.daemon.ending import Ending
from agentcg.daemon.events import KernelEvents
from agentcg.daemon.layout import LEAF, host_memory
from agentcg.daemon.registry import Connection, Registry
from agentcg.daemon.views import session_view
from agentcg.kernel.cgroup import Cgroup, CgroupError
from agentcg.kernel.peer import Peer, move_pinned
from agentcg.kernel.process import start_ticks

log = logging.getLogger("agentcg.daemon")

DRAIN_TIMEOUT_S = 5.0  # how long session.close waits for the session to empty


class Sessions:
    def __init__(self, reg: Registry, events: KernelEvents, ending: Ending) -> None:
        self.reg = reg
        self.events = events
        self.ending = ending

    # ------------------------------------------------------------ ops

    async def hello(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {
            "version": negotiate_version(args["version"]),
            "server": f"agentcg {__version__}",
            "peer": conn.peer.as_dict(),
        }
        where = self.reg.locate(conn.peer)
        if where.session:
            result["session"] = where.session
        if where.call:
            result["call"] = where.call  # already inside a tool call: run nested tools directly
        return result

    async def open(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        peer = conn.peer
        sess = self.open_session(peer, args)
        if args.get("adopt"):
            self._adopt(sess, peer)
        return {"session": sess.name, "cgroup": str(self.reg.layout.session(sess.name).path)}

    async def close(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        sess = self.reg.session_or_raise(conn.peer, args["session"])
        killed = await self.close_session(sess, "session_closed")
        return {"closed": sess.name, "killed_calls": killed}

    async def close_session(self, sess: Session, reason: str) -> int:
        """Kill the session's calls (with `reason`), give adopted processes back, remove
        its cgroup; the number of calls killed. Also for the GC and Docker events."""
        reg = self.reg
        if reg.sessions.get(sess.name) is not sess:
            return 0  # closed meanwhile by someone else
        scg = reg.layout.session(sess.name)
        # Gone for everyone else before the first await: a second close or a
        # call.begin racing this one gets not_found instead of a half-removed session.
        reg.drop_session(sess)
        self.events.unwatch_session(sess.name)
        killed = 0
        for call_id in list(sess.calls):
            call = reg.calls.get(call_id)
            if call:
                killed += reg.call_state(call) in ("pending", "running")
                await self.ending.finish_if_live(call, reason)
        self._give_back(sess, scg.child("agent"))
        await reg.reaper.remove(scg, DRAIN_TIMEOUT_S)
        reg.state.drop("sessions", sess.name)
        reg.stats.session_closed(sess.name)
        return killed

    async def status(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return session_view(self.reg, self.reg.session_or_raise(conn.peer, args["session"]))

    async def list(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return {"sessions": [session_view(self.reg, s) for s in self.reg.sessions.values()]}

    # ------------------------------------------------------------ helpers

    def open_session(self, peer: Peer, args: dict[str, Any]) -> Session:
        """The named session, newly opened, or (no name) the peer's default session.
        Sessions nest under the peer's home, capped by config and by every limit above."""
        reg = self.reg
        where = reg.locate(peer)
        if where.call:
            raise AgentcgError(
                "unauthorized", f"a tool inside call {where.call} cannot open sessions"
            )

        def admin() -> bool:  # asked only where it decides: it may cost /proc reads
            return reg.is_admin(peer)

        name = args.get("name")
        if not name:
            existing = reg.sessions.get(where.session or "") or reg.default_session(
                peer.uid, where.home
            )
            if existing is not None and reg.layout.session(existing.name).exists():
                authz.authorize_session(peer, where, admin, existing)
                return existing  # the peer's default session is opened once and reused
            if existing is not None:  # its home went away (the container was removed)
                reg.drop_session(existing)
                reg.state.drop("sessions", existing.name)
            name = authz.default_session_name(peer, where.home, reg.sessions.__contains__)
        else:
            authz.check_session_name(name, "the one opened without a name", admin())
            existing = reg.sessions.get(name)
            if existing is not None:
                authz.authorize_session(peer, where, admin, existing)
                raise AgentcgError(
                    "conflict", f"session {name!r} is already open; close it or pick another name"
                )
        if not admin():
            self._check_caps(peer.uid, where.home)
        if where.home is not None:
            reg.homes.prepare(where.home)
        parent = reg.layout.sessions_of(where.home)
        memory_max = reg.layout.ancestor_limit("memory.max", parent)
        available = host_memory() if memory_max is None else min(host_memory(), memory_max)
        memory, limit = caps.session_memory(reg.cfg, args.get("memory"), available)
        sess = Session(
            name=name,
            owner_uid=peer.uid,
            container=peer.container,
            memory=memory,
            cpu=args.get("cpu"),
            pids=caps.session_pids(
                reg.cfg, args.get("pids"), reg.layout.ancestor_limit("pids.max", parent)
            ),
            max_calls=min(
                args.get("max_calls", reg.cfg.session.max_calls), reg.cfg.session.max_calls
            ),
            created=time.time(),
            home=where.home,
            default=not args.get("name"),
            limit=limit,
            owner_pid=peer.pid,
            owner_start=start_ticks(peer.pid),
        )
        # The record first: a crash before the cgroup exists leaves a record that
        # recovery drops, never a cgroup nobody owns.
        reg.state.put("sessions", name, sess.record())
        reg.add_session(sess)
        try:
            reg.layout.create_session(sess)
        except AgentcgError:
            reg.drop_session(sess)
            reg.state.drop("sessions", name)
            raise
        self.events.watch_session(sess)
        log.info(
            "session %s opened by uid %s in %s (container %s)",
            name,
            peer.uid,
            where.home or "the daemon's root",
            peer.container,
        )
        return sess

    def _check_caps(self, uid: int, home: str | None) -> None:
        reg = self.reg
        per_owner = reg.cfg.session.max_per_owner
        owned = sum(1 for s in reg.sessions.values() if (s.owner_uid, s.home) == (uid, home))
        if owned >= per_owner:
            raise AgentcgError(
                "limit_exceeded",
                f"you already have {owned} sessions open (session.max_per_owner); close one first",
            )
        if len(reg.sessions) >= reg.cfg.daemon.max_sessions:
            raise AgentcgError(
                "limit_exceeded",
                f"the daemon already holds {len(reg.sessions)} sessions (daemon.max_sessions); "
                "close one or retry later",
            )

    def _adopt(self, sess: Session, peer: Peer) -> None:
        """Move the agent process itself into the session's agent/ leaf: only within its
        own home, so it keeps every limit it had."""
        reg = self.reg
        where = reg.locate(peer)
        if where.session == sess.name:
            return  # already adopted: keep where it first came from
        if where.home != sess.home:
            raise AgentcgError(
                "unauthorized",
                f"adopt would move you out of your cgroup {where.home or peer.cgroup} and its "
                "limits; adopt into a session opened from where you run",
            )
        # A home's own processes were just moved to its leaf: that is where it goes back.
        origin = f"{peer.cgroup}/{LEAF}" if peer.cgroup == sess.home else peer.cgroup
        sess.adopted[str(peer.pid)] = origin
        reg.state.put("sessions", sess.name, sess.record())
        move_pinned(reg.layout.session(sess.name).child("agent"), peer)

    def _give_back(self, sess: Session, agent: Cgroup) -> None:
        """Everything in agent/ (adopted agents and what they started there) goes back
        where the agent came from, else to its home's leaf; a pid no longer in agent/
        exited (and may be recycled), so only agent/'s own list is used."""
        layout = self.reg.layout
        fallback = [layout.by_relative_path(o) for o in dict.fromkeys(sess.adopted.values())]
        if sess.home is not None:
            fallback.append(layout.home_cg(sess.home).child(LEAF))
        try:
            pids = agent.procs()
        except (CgroupError, OSError):
            return
        for pid in pids:
            origin = sess.adopted.get(str(pid))
            targets = [layout.by_relative_path(origin)] if origin else []
            for target in [*targets, *fallback]:
                try:
                    target.add_process(pid)
                    break
                except (CgroupError, OSError):
                    continue
            else:
                log.warning("pid %d of session %s had nowhere to go back to", pid, sess.name)

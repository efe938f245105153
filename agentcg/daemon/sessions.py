"""Sessions: hello, open (with adoption), close, status, list."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from agentcg import __version__
from agentcg.core import authz
from agentcg.core.errors import AgentcgError
from agentcg.core.model import Session
from agentcg.core.policy import format_size
from agentcg.core.protocol import negotiate_version
from agentcg.daemon.ending import Ending
from agentcg.daemon.events import KernelEvents
from agentcg.daemon.registry import Connection, Registry
from agentcg.daemon.views import session_view
from agentcg.kernel.cgroup import CgroupError
from agentcg.kernel.peer import Peer

log = logging.getLogger("agentcg.daemon")


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
        if args.get("adopt") and peer.container and not self.reg.is_admin(peer):
            raise AgentcgError(
                "unauthorized",
                "adopt would take the agent out of its container's cgroup and limits; "
                "open the session without adopt",
            )
        sess = self.open_session(peer, args)
        if args.get("adopt"):
            self._adopt(sess, peer)
        return {"session": sess.name, "cgroup": str(self.reg.layout.session(sess.name).path)}

    async def close(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        reg = self.reg
        sess = reg.session_or_raise(conn.peer, args["session"])
        # Gone for everyone else before the first await: a second close or a
        # call.begin racing this one gets not_found instead of a half-removed session.
        del reg.sessions[sess.name]
        self.events.unwatch_session(sess.name)
        killed = 0
        for call_id in list(sess.calls):
            call = reg.calls.get(call_id)
            if call:
                killed += call.state in ("pending", "running")
                await self.ending.finish_if_live(call, "session_closed")
        scg = reg.layout.session(sess.name)
        with contextlib.suppress(CgroupError, OSError):
            still_there = set(scg.child("agent").procs())
            for pid, origin in sess.adopted.items():
                # Give adopted agents back to where they came from, if that still
                # exists; a pid no longer in agent/ exited (and may be recycled).
                if int(pid) in still_there:
                    with contextlib.suppress(CgroupError, OSError):
                        reg.layout.by_relative_path(origin).add_process(int(pid))
        await reg.layout.remove_async(scg)
        reg.state.drop("sessions", sess.name)
        reg.stats.session_closed(sess.name)
        return {"closed": sess.name, "killed_calls": killed}

    async def status(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return session_view(self.reg, self.reg.session_or_raise(conn.peer, args["session"]))

    async def list(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return {"sessions": [session_view(self.reg, s) for s in self.reg.sessions.values()]}

    # ------------------------------------------------------------ helpers

    def open_session(self, peer: Peer, args: dict[str, Any]) -> Session:
        reg = self.reg
        where = reg.locate(peer)
        if where.call:
            raise AgentcgError(
                "unauthorized", f"a tool inside call {where.call} cannot open sessions"
            )
        admin = reg.is_admin(peer)
        default = where.session or authz.default_session_name(peer)
        name = args.get("name") or default
        authz.check_session_name(name, default, admin)
        existing = reg.sessions.get(name)
        if existing is not None:
            authz.authorize_session(peer, where, admin, existing)
            if not args.get("name"):
                return existing  # the peer's default session is opened once and reused
            raise AgentcgError(
                "conflict", f"session {name!r} is already open; close it or pick another name"
            )
        caps = reg.cfg.session
        owned = sum(
            1
            for s in reg.sessions.values()
            if (s.owner_uid, s.container) == (peer.uid, peer.container)
        )
        if owned >= caps.max_per_owner and not admin:
            raise AgentcgError(
                "limit_exceeded",
                f"you already have {owned} sessions open (session.max_per_owner); close one first",
            )
        # Not asking must not get around the cap.
        memory = args.get("memory", caps.default_memory or caps.max_memory)
        if memory is not None and caps.max_memory is not None and memory > caps.max_memory:
            raise AgentcgError(
                "limit_exceeded",
                f"session memory {format_size(memory)} exceeds the configured cap "
                f"{format_size(caps.max_memory)}; ask for less",
            )
        sess = Session(
            name=name,
            owner_uid=peer.uid,
            container=peer.container,
            memory=memory,
            cpu=args.get("cpu"),
            pids=args.get("pids", caps.default_pids),
            max_calls=min(args.get("max_calls", caps.max_calls), caps.max_calls),
            created=time.time(),
        )
        reg.layout.create_session(sess)
        reg.sessions[name] = sess
        self.events.watch_session(sess)
        reg.state.put("sessions", name, sess.record())
        log.info("session %s opened by uid %s container %s", name, peer.uid, peer.container)
        return sess

    def _adopt(self, sess: Session, peer: Peer) -> None:
        """Move the agent process itself into the session's agent/ leaf."""
        sess.adopted[str(peer.pid)] = peer.cgroup
        self.reg.layout.session(sess.name).child("agent").add_process(peer.pid)
        self.reg.state.put("sessions", sess.name, sess.record())

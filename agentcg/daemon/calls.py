"""Tool calls: begin, attach, end, status, claim, and how a call ends."""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import time
from typing import Any

from agentcg.core import authz, caps
from agentcg.core.errors import AgentcgError
from agentcg.core.intent import parse_intent
from agentcg.core.model import Call, Session
from agentcg.core.policy import Committed, decide
from agentcg.core.protocol import event
from agentcg.daemon.ending import Ending
from agentcg.daemon.events import KernelEvents
from agentcg.daemon.registry import CallRuntime, Connection, Registry
from agentcg.daemon.sched import SchedService
from agentcg.daemon.sessions import Sessions
from agentcg.daemon.views import call_view
from agentcg.kernel.cgroup import CgroupError
from agentcg.kernel.oomadj import set_oom_score_adj
from agentcg.kernel.peer import Peer, PeerGone, is_descendant, move_pinned, pin_child, unpin

log = logging.getLogger("agentcg.daemon")


class Calls:
    def __init__(
        self,
        reg: Registry,
        events: KernelEvents,
        sessions: Sessions,
        ending: Ending,
        sched: SchedService,
    ) -> None:
        self.reg = reg
        self.events = events
        self.sessions = sessions
        self.ending = ending
        self.sched = sched

    # ------------------------------------------------------------ ops

    async def begin(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        """Begin a call; with `pid`, also attach that waiting child to it (one round
        trip instead of two; as call.attach with pid). The call begins even if the
        attach is refused: the result then carries `attach_error`."""
        reg, peer = self.reg, conn.peer
        intent = parse_intent(args["intent"], reg.cfg)  # before any side effect
        pid = args.get("pid")
        if pid is not None and args.get("wait_s"):
            raise AgentcgError(
                "invalid_value",
                "call.begin takes pid (attach at once) or wait_s (wait for a slot), not "
                "both; begin with wait_s, then send call.attach",
            )
        where = reg.locate(peer)
        if where.call:
            raise AgentcgError(
                "conflict",
                f"already inside tool call {where.call}: run the command directly "
                "(`agentcg run` does so by itself)",
            )

        def admin() -> bool:  # asked only where it decides: it may cost /proc reads
            return reg.is_admin(peer)

        caps.check_priority(reg.cfg, intent.priority, admin, peer.uid, (peer.gid,), peer.container)
        name = args.get("session") or where.session
        sess = reg.session_or_raise(peer, name) if name else self.sessions.open_session(peer, {})
        if sess.home != where.home and not admin():
            # Its tool would leave the cgroup (and the limits) it runs under now.
            raise AgentcgError(
                "unauthorized",
                f"session {sess.name!r} lives outside your cgroup {where.home or peer.cgroup}; "
                "begin calls in a session opened from where you run",
            )
        # A full session: wait for a slot in line (up to wait_s), or fail now.
        wait_s = min(args.get("wait_s", 0.0), reg.cfg.session.max_wait_s)
        await reg.admission.admit(
            sess.name,
            lambda: _no_slot(sess),
            wait_s,
            lambda why, position: _tell_waiting(conn, sess.name, why, position, wait_s),
        )
        # Admitted: from here on nothing awaits until the call holds its slot.
        if len(reg.calls) >= reg.cfg.daemon.max_calls and not admin():
            raise AgentcgError(
                "limit_exceeded",
                f"the daemon already runs {len(reg.calls)} tool calls (daemon.max_calls); "
                "wait for one to end",
            )
        held = [reg.calls[c].limits for c in sess.calls if c in reg.calls]
        committed = Committed(
            asks=sum(lim.memory_high or 0 for lim in held),
            protected=sum(lim.memory_low for lim in held),
        )
        limits = decide(intent, reg.cfg, sess.memory, committed)
        call = Call(
            id="c" + secrets.token_hex(6),
            session=sess.name,
            token=secrets.token_hex(16),
            owner_uid=peer.uid,
            owner_pid=peer.pid,
            intent=intent,
            limits=limits,
            started=time.time(),
        )
        ccg = reg.layout.create_call(sess, call.id, limits)
        try:
            self.events.watch(call, fresh=True)
        except OSError as e:
            self.events.unwatch(call)
            reg.layout.remove_now(ccg)
            if e.errno == errno.ENOSPC:
                raise AgentcgError(
                    "busy", "the daemon has no inotify watches left; retry when calls end"
                ) from e
            raise AgentcgError("internal", f"could not watch the call's cgroup: {e}") from e
        reg.calls[call.id] = call
        self.sched.begin(call)
        reg.runtime[call.id] = CallRuntime(conn=conn)
        sess.calls.add(call.id)
        conn.calls.add(call.id)
        reg.stats.call_started(sess.name)
        self._arm_timeout(call)
        reg.state.put("calls", call.id, call.record())
        result: dict[str, Any] = {
            "call": call.id,
            "token": call.token,
            "session": sess.name,
            "cgroup": str(ccg.path),
            "limits": limits.to_dict(),
        }
        if pid is not None:
            try:
                self._attach_child(peer, call, pid)
                result["attached"] = True
            except AgentcgError as e:
                result["attach_error"] = e.to_dict()
        return result

    async def attach(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        """The tool process, before exec, is placed into its call's cgroup: the peer
        itself, or (`pid`) the peer's child waiting on it, checked as if it had asked."""
        pid = args.get("pid")
        if pid is None:
            return self._attach(conn.peer, self._lookup(args["call"], args["token"]))
        call = self.owned(conn.peer, args["call"], args["token"])
        return self._attach_child(conn.peer, call, pid)

    def _attach_child(self, asker: Peer, call: Call, pid: int) -> dict[str, Any]:
        try:
            child = pin_child(asker, pid)
        except PeerGone as e:
            raise AgentcgError("unauthorized", f"{e}; nothing was moved") from None
        try:
            if (child.uid, child.gid) != (asker.uid, asker.gid) and not self.reg.is_admin(asker):
                # e.g. a setuid helper the agent started: not the agent's to move
                raise AgentcgError(
                    "unauthorized",
                    f"pid {pid} runs as uid {child.uid} gid {child.gid}, not as you; "
                    "only children with your own ids can be attached by pid",
                )
            return self._attach(child, call)
        finally:
            unpin(child)

    def _attach(self, peer: Peer, call: Call) -> dict[str, Any]:
        """`peer` (the asker itself, or its pinned child) into `call`, checked as if it
        had asked: ownership, ancestry, where it runs."""
        sess, where = self._authorize(peer, call)
        if not is_descendant(peer.pid, call.owner_pid):
            raise AgentcgError(
                "unauthorized",
                f"pid {peer.pid} is not a descendant of the process "
                f"that began call {call.id}; only its own children can attach",
            )
        if call.state == "ended":
            raise AgentcgError("conflict", f"call {call.id} is ending; begin a new call")
        if where.call and where.call != call.id:
            raise AgentcgError(
                "unauthorized", f"pid {peer.pid} belongs to call {where.call}; it cannot move"
            )
        if sess is None or (sess.home != where.home and not self.reg.is_admin(peer)):
            raise AgentcgError(
                "unauthorized",
                f"pid {peer.pid} runs outside the cgroup call {call.id} nests under; "
                "it cannot be moved there",
            )
        ccg = self.reg.call_cg(call)
        try:
            move_pinned(ccg, peer)
        except PeerGone as e:
            raise AgentcgError("unauthorized", f"{e}; nothing was moved") from None
        try:
            # Out of budget, the kernel's OOM killer takes low priorities first, and
            # any call before its agent.
            set_oom_score_adj(peer.pid, self.reg.cfg.priorities[call.intent.priority].oom_score_adj)
        except CgroupError as e:
            log.warning("call %s: %s", call.id, e.message)
        self.sched.attach(call, peer.pid)
        call.state = "running"
        return {"call": call.id, "cgroup": str(ccg.path)}

    async def end(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        call = self.owned(conn.peer, args["call"], args["token"])
        outcome = await self.ending.finish(call, exit_status=args.get("exit_status"))
        return outcome.to_dict()

    async def status(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return call_view(self.reg, self.owned(conn.peer, args["call"], None))

    async def claim(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        call = self.owned(conn.peer, args["call"], args["token"])
        rt = self.reg.runtime.setdefault(call.id, CallRuntime())
        if rt.conn is not None and rt.conn is not conn:
            rt.conn.calls.discard(call.id)
        rt.conn = conn
        conn.calls.add(call.id)
        if rt.orphan_timer:
            rt.orphan_timer.cancel()
            rt.orphan_timer = None
        return {"call": call.id, "state": self.reg.call_state(call)}

    # ------------------------------------------------------------ helpers

    def _lookup(self, call_id: str, token: str | None) -> Call:
        call = self.reg.calls.get(call_id)
        if call is None:
            raise AgentcgError("not_found", f"no running call {call_id!r}: it ended or never began")
        if token is not None and not secrets.compare_digest(token, call.token):
            raise AgentcgError("unauthorized", f"wrong token for call {call_id!r}")
        return call

    def owned(self, peer: Peer, call_id: str, token: str | None) -> Call:
        call = self._lookup(call_id, token)
        self._authorize(peer, call)
        return call

    def _authorize(self, peer: Peer, call: Call) -> tuple[Session | None, authz.Location]:
        """May `peer` act on `call`? Its session and the peer's location, for further checks."""
        sess = self.reg.sessions.get(call.session)
        where = self.reg.locate(peer)
        authz.authorize_call(peer, where, lambda: self.reg.is_admin(peer), call, sess)
        return sess, where

    def _arm_timeout(self, call: Call) -> None:
        if call.limits.timeout_s:
            left = max(0.0, call.started + call.limits.timeout_s - time.time())
            self.reg.runtime[call.id].timeout_timer = asyncio.get_running_loop().call_later(
                left, self.reg.kill, call.id, "timeout"
            )

    def adopt_recovered(self, call: Call) -> None:
        """A running call found after a restart: watched and timed again; see serving()."""
        self.reg.runtime[call.id] = CallRuntime()
        self.events.watch(call)
        self._arm_timeout(call)  # the deadline still counts from the call's start

    def serving(self) -> None:
        """The socket is up: recovered calls nobody claimed yet are killed as orphaned
        unless their agent reconnects and claims them within the grace from now."""
        reg = self.reg
        for call_id, rt in reg.runtime.items():
            if rt.conn is None and rt.orphan_timer is None:
                rt.orphan_timer = asyncio.get_running_loop().call_later(
                    reg.cfg.daemon.reclaim_grace_s, self._orphan_timeout, call_id
                )

    def _orphan_timeout(self, call_id: str) -> None:
        call = self.reg.calls.get(call_id)
        if call and self.reg.conn_of(call) is None:
            log.info("call %s was not reclaimed after restart; killing it", call_id)
            self.reg.spawn(self.ending.finish_if_live(call, "disconnect"))


def _no_slot(sess: Session) -> str | None:
    if len(sess.calls) < sess.max_calls:
        return None
    return f"session {sess.name!r} already runs {len(sess.calls)} tool calls (its max_calls)"


def _tell_waiting(conn: Connection, session: str, why: str, position: int, wait_s: float) -> None:
    conn.push(
        event(
            "waiting",
            None,
            {
                "session": session,
                "position": position,
                "wait_s": wait_s,
                "message": f"{why}; waiting up to {wait_s:g} s for a slot ({position} in line)",
            },
        )
    )

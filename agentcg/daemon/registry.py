"""Everything the daemon knows at run time, in one place every service shares.

Sessions and calls are core data (agentcg.core.model); what ties a call to the running
daemon (its client connection, its timers) is kept beside it here, so the data stays
pure. One asyncio loop owns all of it: no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from agentcg.core import authz
from agentcg.core.config import Config
from agentcg.core.errors import AgentcgError
from agentcg.core.metrics import DaemonStats
from agentcg.core.model import Call, Session
from agentcg.daemon.admission import Admission
from agentcg.daemon.bus import EventBus
from agentcg.daemon.homes import Homes
from agentcg.daemon.layout import Layout
from agentcg.daemon.reaper import Reaper
from agentcg.daemon.state import State
from agentcg.kernel.cgroup import Cgroup, CgroupError
from agentcg.kernel.peer import Peer

log = logging.getLogger("agentcg.daemon")


class Connection:
    """What the daemon needs of a client connection: who, and how to push events."""

    def __init__(self, peer: Peer, push: Callable[[dict[str, Any]], None]) -> None:
        self.peer = peer
        self.push = push
        self.calls: set[str] = set()


@dataclass
class CallRuntime:
    """A call's ties to the running daemon; none of it survives a restart."""

    conn: Connection | None = None
    timeout_timer: asyncio.TimerHandle | None = None
    orphan_timer: asyncio.TimerHandle | None = None  # armed after a restart until claimed

    def cancel_timers(self) -> None:
        for timer in (self.timeout_timer, self.orphan_timer):
            if timer:
                timer.cancel()


@dataclass
class Registry:
    cfg: Config
    layout: Layout
    state: State
    bus: EventBus
    stats: DaemonStats  # counters for the stats op; BPF loaders report their state here
    sessions: dict[str, Session] = field(default_factory=dict)
    calls: dict[str, Call] = field(default_factory=dict)
    runtime: dict[str, CallRuntime] = field(default_factory=dict)
    # open connections per (uid, home), kept by the server; the session GC reads it
    peers: dict[tuple[int, str | None], int] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # keeps spawned work alive
    admission: Admission = field(default_factory=Admission)  # waits for room in a session
    reaper: Reaper = field(default_factory=Reaper)
    homes: Homes = field(init=False)

    def __post_init__(self) -> None:
        self.homes = Homes(self.layout, self.state)

    # ------------------------------------------------------------ identity

    def locate(self, peer: Peer) -> authz.Location:
        """Where the peer's cgroup puts it: its home, and the session and call it is in."""
        place = self.homes.place(peer.cgroup)
        return authz.Location(place.session, place.call, place.home)

    def is_admin(self, peer: Peer) -> bool:
        return authz.is_admin(peer, self.locate(peer), self.cfg.admin)

    # ------------------------------------------------------------ sessions

    def add_session(self, sess: Session) -> None:
        self.sessions[sess.name] = sess
        self.layout.homes[sess.name] = sess.home

    def drop_session(self, sess: Session) -> None:
        """Forget a session (its cgroup is being removed or is gone)."""
        if self.sessions.get(sess.name) is sess:
            del self.sessions[sess.name]
            self.admission.cancel(
                sess.name,
                AgentcgError("not_found", f"session {sess.name!r} was closed meanwhile"),
            )

    def default_session(self, uid: int, home: str | None) -> Session | None:
        for s in self.sessions.values():
            if s.default and s.owner_uid == uid and s.home == home:
                return s
        return None

    # ------------------------------------------------------------ lookups

    def call_cg(self, call: Call) -> Cgroup:
        return self.layout.call(call.session, call.id)

    def conn_of(self, call: Call) -> Connection | None:
        rt = self.runtime.get(call.id)
        return rt.conn if rt else None

    def live_calls(self, sess: Session, exited: bool = False) -> list[Call]:
        """The session's calls that are not condemned and may still run something: a
        running call whose processes are all gone (not ended yet) is left out, unless
        `exited` (no cgroupfs read: a superset)."""
        calls = (self.calls.get(c) for c in sess.calls)
        return [c for c in calls if c and c.live and (exited or self.call_state(c) != "exited")]

    def call_state(self, call: Call) -> str:
        """The call's state, "exited" for a running call whose processes are all gone
        (read from cgroupfs when asked: watching for it would wake the daemon twice
        per call)."""
        if call.state != "running":
            return call.state
        try:
            return "running" if self.call_cg(call).populated else "exited"
        except (CgroupError, OSError):
            return "exited"  # its cgroup is gone

    def memory_current(self, call: Call) -> int:
        try:
            return self.call_cg(call).memory_current()
        except (CgroupError, OSError):
            return 0

    # ------------------------------------------------------------ actions

    def push(self, call: Call, name: str, data: dict[str, Any]) -> None:
        conn = self.conn_of(call)
        self.bus.publish(name, call.id, data, conn.push if conn else None)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def kill(self, call_id: str, reason: str) -> None:
        """cgroup.kill the call's processes; its end is handled as for any other exit."""
        call = self.calls.get(call_id)
        if call is None or call.state == "ended":
            return
        call.killed_reason = call.killed_reason or reason
        with contextlib.suppress(CgroupError, OSError):
            self.call_cg(call).kill()
        self.push(call, "killed", {"reason": reason})

    def session_or_raise(self, peer: Peer, name: str) -> Session:
        sess = self.sessions.get(name)
        if sess is None:
            raise AgentcgError("not_found", f"no session {name!r}: open it first with session.open")
        authz.authorize_session(peer, self.locate(peer), lambda: self.is_admin(peer), sess)
        return sess

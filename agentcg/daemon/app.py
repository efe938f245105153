"""The daemon's composition root: builds the services, routes each protocol op to its
handler, and runs start-up, recovery and shutdown.

Data path: server.py hands a validated Request and its Peer to `Daemon.handle`; the
handler (sessions.py, calls.py) checks authorization (core.authz), turns the intent into
limits (core.policy), acts on cgroupfs through layout.py, watches the kernel's events
(events.py, escalation.py) and turns what happened into an Outcome (ending.py).
Everything runs on one asyncio loop, so state changes need no locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from agentcg.core.config import Config
from agentcg.core.errors import AgentcgError
from agentcg.core.metrics import DaemonStats
from agentcg.core.protocol import OPS, Request
from agentcg.daemon.bus import EventBus
from agentcg.daemon.calls import Calls
from agentcg.daemon.docker_events import DockerEvents
from agentcg.daemon.ending import Ending
from agentcg.daemon.escalation import Escalation
from agentcg.daemon.events import KernelEvents
from agentcg.daemon.gc import SessionGC
from agentcg.daemon.layout import Layout
from agentcg.daemon.listen import ensure_fd_budget
from agentcg.daemon.lock import DaemonLock
from agentcg.daemon.recovery import recover
from agentcg.daemon.registry import Connection, Registry
from agentcg.daemon.sched import SchedService
from agentcg.daemon.sessions import Sessions
from agentcg.daemon.state import State, check_separate
from agentcg.daemon.stats import Stats
from agentcg.kernel.peer import Peer
from agentcg.kernel.watch import Watcher

Handler = Callable[[Connection, dict[str, Any]], Awaitable[dict[str, Any]]]


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.reg = Registry(
            cfg,
            Layout(cfg),
            State(cfg.daemon.state_dir),
            EventBus(),
            DaemonStats(cfg.metrics.tool_kinds),
        )
        self.escalation = Escalation(self.reg)
        self.events = KernelEvents(self.reg, self.escalation)
        self.sched = SchedService(self.reg)
        self.ending = Ending(self.reg, self.events, self.sched)
        self.sessions = Sessions(self.reg, self.events, self.ending)
        self.calls = Calls(self.reg, self.events, self.sessions, self.ending, self.sched)
        self.stats = Stats(self.reg)
        self.gc = SessionGC(self.reg, self.sessions.close_session)
        self.docker = (
            DockerEvents(self.reg, self.sessions, cfg.docker.socket) if cfg.docker.socket else None
        )
        self.handlers: dict[str, Handler] = {
            "hello": self.sessions.hello,
            "session.open": self.sessions.open,
            "session.close": self.sessions.close,
            "session.status": self.sessions.status,
            "list": self.sessions.list,
            "call.begin": self.calls.begin,
            "call.attach": self.calls.attach,
            "call.end": self.calls.end,
            "call.status": self.calls.status,
            "call.claim": self.calls.claim,
            "stats": self.stats.stats,
        }
        missing, extra = set(OPS) - set(self.handlers), set(self.handlers) - set(OPS)
        if missing or extra:
            raise AssertionError(f"op table and handlers differ: missing {missing}, extra {extra}")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Lock, then touch cgroupfs, then recover. The state directory's lock comes
        first (a second daemon refuses before it reads a record or touches a cgroup),
        then the cgroup root's (two daemons must not share one root either)."""
        d = self.cfg.daemon
        check_separate(d.state_dir, d.socket)
        self.locks = [DaemonLock.state_dir(self.reg.state.open(), str(d.state_dir))]
        ensure_fd_budget(d.max_connections)
        self.reg.layout.setup()
        self.locks.append(DaemonLock.cgroup_root(str(self.reg.layout.root.path)))
        self.reg.layout.enter()
        watcher = Watcher(loop)
        self.events.start(watcher)
        self.reg.reaper.start(watcher)
        recover(self.reg, self.events, self.calls)
        self.sched.start()

    def serving(self) -> None:
        """The socket accepts connections: the reclaim grace of recovered calls starts,
        and so do the session GC's grace and the Docker watch."""
        self.calls.serving()
        loop = asyncio.get_running_loop()
        self.gc.start(loop)
        if self.docker:
            self.docker.start(loop)

    async def handle(self, conn: Connection, req: Request) -> dict[str, Any]:
        if req.spec.admin and not self.is_admin(conn.peer):
            raise AgentcgError(
                "unauthorized",
                f"{req.op} is an admin operation; your uid "
                f"{conn.peer.uid} is not in the config's [admin] uids/gids",
            )
        return await self.handlers[req.op](conn, req.args)

    def is_admin(self, peer: Peer) -> bool:
        return self.reg.is_admin(peer)

    async def connection_lost(self, conn: Connection) -> None:
        await self.ending.connection_lost(conn)

    async def shutdown(self) -> None:
        """Graceful stop: calls keep running; a restarted daemon adopts them."""
        self.gc.stop()
        if self.docker:
            self.docker.close()
        self.events.close()
        await self.sched.stop()

"""Closes sessions whose owner is gone (core.gc decides): a container that died or was
removed, or a session whose opening process exited, whose calls all ended, and whose
owner did not come back (no connection) within session.orphan_grace_s."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from agentcg.core import gc
from agentcg.core.model import Session
from agentcg.daemon.layout import LEAF
from agentcg.daemon.registry import Registry
from agentcg.kernel.cgroup import Cgroup, CgroupError
from agentcg.kernel.process import alive

log = logging.getLogger("agentcg.daemon")

MAX_TICK_S = 5.0

Close = Callable[[Session, str], Coroutine[Any, Any, int]]


def _populated(cg: Cgroup) -> bool:
    try:
        return cg.populated
    except (CgroupError, OSError):
        return False


class SessionGC:
    def __init__(self, reg: Registry, close: Close) -> None:
        self.reg = reg
        self.close_session = close
        self.grace = reg.cfg.session.orphan_grace_s
        self._idle: dict[str, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.grace is not None:
            self._timer = loop.call_later(self._tick_s(), self._tick, loop)

    def stop(self) -> None:
        if self._timer:
            self._timer.cancel()

    def _tick_s(self) -> float:
        return min(MAX_TICK_S, max(0.1, (self.grace or 0) / 4))

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.grace is not None
        uses = [self._use(s) for s in self.reg.sessions.values()]
        close, self._idle = gc.sweep(uses, self._idle, time.monotonic(), self.grace)
        for name in close:
            sess = self.reg.sessions.get(name)
            if sess is not None:
                log.info("session %s: its owner is gone; closing it", name)
                self.reg.spawn(self.close_session(sess, "session_closed"))
        self._timer = loop.call_later(self._tick_s(), self._tick, loop)

    def _use(self, sess: Session) -> gc.SessionUse:
        layout = self.reg.layout
        scg = layout.session(sess.name)
        if not scg.exists():
            return gc.SessionUse(sess.name, exists=False, in_use=False)
        in_use = (
            bool(sess.calls)
            or (sess.owner_pid is not None and alive(sess.owner_pid, sess.owner_start))
            or (
                sess.owner_uid is not None and bool(self.reg.peers.get((sess.owner_uid, sess.home)))
            )
            or _populated(scg.child("agent"))
            or (sess.home is not None and _populated(layout.home_cg(sess.home).child(LEAF)))
        )
        return gc.SessionUse(sess.name, exists=True, in_use=in_use)

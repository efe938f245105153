"""Carries out the escalation decisions (agentcg.core.escalation) for a session nearing
its memory budget: freeze the chosen call, then thaw or kill it, and say so."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from agentcg.core import escalation
from agentcg.core.escalation import FrozenCall, Step
from agentcg.core.model import Call
from agentcg.core.policy import RunningCall
from agentcg.daemon.registry import Registry
from agentcg.kernel.cgroup import CgroupError

log = logging.getLogger("agentcg.daemon")

PRESSURE_CHECK_S = 0.25  # while a call is frozen: how often to see if memory came back


class Escalation:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def on_session_memory_events(self, name: str) -> None:
        detected = time.monotonic()
        reg = self.reg
        sess = reg.sessions.get(name)
        if sess is None:
            return
        try:
            high = reg.layout.session(name).memory_events().get("high", 0)
        except (CgroupError, OSError):
            return
        if high <= sess.high_events:
            return
        reg.stats.action(name, "throttle", "session_memory_high", count=high - sess.high_events)
        sess.high_events = high
        snapshot = [
            RunningCall(
                c.id,
                reg.cfg.priorities[c.intent.priority].kill_order,
                reg.memory_current(c),
                c.frozen_at is not None,
            )
            for c in reg.live_calls(sess)
        ]
        victim = escalation.freeze_victim(snapshot)
        if victim is None:
            return
        call = reg.calls[victim]
        try:
            reg.call_cg(call).freeze()
        except (CgroupError, OSError) as e:
            log.warning("could not freeze call %s: %s", call.id, e)
            return
        call.frozen_at, call.was_frozen = time.monotonic(), True
        reg.stats.observe_latency("freeze", detected)
        log.info("session %s under memory pressure: froze call %s", name, call.id)
        reg.push(call, "frozen", {"reason": "session_pressure", "session": name})
        self._schedule(name)

    def cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer:
            timer.cancel()

    def _schedule(self, name: str) -> None:
        self.cancel(name)
        self._timers[name] = asyncio.get_running_loop().call_later(
            PRESSURE_CHECK_S, self._check, name
        )

    def _check(self, name: str) -> None:
        self._timers.pop(name, None)
        reg = self.reg
        sess = reg.sessions.get(name)
        if sess is None:
            return
        frozen = {c.id: c for c in reg.live_calls(sess) if c.frozen_at is not None}
        if not frozen:
            return
        scg = reg.layout.session(name)
        try:
            current, high = scg.memory_current(), scg.read_int("memory.high")
        except (CgroupError, OSError):
            return
        now = time.monotonic()
        steps = escalation.after_freeze(
            [FrozenCall(c.id, c.frozen_at or now) for c in frozen.values()],
            current,
            high,
            now,
            reg.cfg.session.freeze_grace_s,
        )
        for call_id, step in steps:
            call = frozen[call_id]
            if step is Step.THAW:
                self._thaw(call, now)
            elif step is Step.KILL:
                log.info("session %s still under pressure: killing call %s", name, call.id)
                call.frozen_at = None
                reg.kill(call.id, "pressure")
            else:
                self._schedule(name)

    def _thaw(self, call: Call, now: float) -> None:
        with contextlib.suppress(CgroupError, OSError):
            self.reg.call_cg(call).thaw()
        self.reg.push(call, "thawed", {"frozen_s": round(now - (call.frozen_at or now), 3)})
        call.frozen_at = None

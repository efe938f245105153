"""Kernel events for calls and sessions: inotify on a call's memory.events (OOM
kills), turned into pushed events; and the memory trouble detector (memdetect.py)
whose reports go to escalation. Whether a call's processes are all gone is read when
it is shown (Registry.call_state), not watched: that would wake the daemon twice per call."""

from __future__ import annotations

import asyncio

from agentcg.core.model import Call, Session
from agentcg.daemon.escalation import Escalation
from agentcg.daemon.memdetect import MemDetect
from agentcg.daemon.outcome import oom_reason
from agentcg.daemon.registry import Registry
from agentcg.kernel.cgroup import CgroupError
from agentcg.kernel.watch import Watcher


class KernelEvents:
    def __init__(self, reg: Registry, escalation: Escalation) -> None:
        self.reg = reg
        self.escalation = escalation
        self.detect = MemDetect(reg, escalation)
        self.watcher: Watcher | None = None

    def start(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.detect.start(asyncio.get_running_loop())

    def close(self) -> None:
        self.detect.close()
        if self.watcher:
            self.watcher.close()

    def watch(self, call: Call, fresh: bool = False) -> None:
        """`fresh`: call.begin just wrote its limits (not a call recovered after a
        restart), so escalation knows its memory.high without reading it back."""
        assert self.watcher is not None
        cg, call_id = self.reg.call_cg(call), call.id
        self.watcher.add(cg.file("memory.events"), lambda _p: self._on_memory_events(call_id))
        self.detect.watch_call(call)
        if fresh:
            self.escalation.begun(call)
        self.escalation.poke(call.session)

    def unwatch(self, call: Call) -> None:
        if self.watcher:
            cg = self.reg.call_cg(call)
            self.watcher.remove(cg.file("memory.events"))
        self.detect.unwatch_call(call)
        self.escalation.forget(call)

    def watch_session(self, sess: Session) -> None:
        self.detect.watch_session(sess)

    def unwatch_session(self, name: str) -> None:
        self.detect.unwatch_session(name)
        self.escalation.cancel(name)

    def _on_memory_events(self, call_id: str) -> None:
        call = self.reg.calls.get(call_id)
        if call is None:
            return
        try:
            ev = self.reg.call_cg(call).memory_events()
        except (CgroupError, OSError):
            return
        call.high_events = max(call.high_events, ev.get("high", 0))
        if ev.get("oom_kill", 0) > call.oom_kills:
            call.oom_kills = ev["oom_kill"]
            # An OOM of its own (at its memory.max), or its session's: out of budget, the
            # kernel took this call as the lowest priority (oom_score_adj).
            reason = oom_reason(ev)
            call.killed_reason = call.killed_reason or reason
            self.reg.push(
                call,
                "oom",
                {
                    "oom_kills": call.oom_kills,
                    "memory_max": call.limits.memory_max,
                    "reason": reason,
                },
            )

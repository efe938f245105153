"""Kernel events for calls and sessions: inotify on their cgroup event files, turned
into state changes and pushed events (throttled, oom) or handed to escalation."""

from __future__ import annotations

import time

from agentcg.core.model import Call, Session
from agentcg.daemon.escalation import Escalation
from agentcg.daemon.registry import Registry
from agentcg.kernel.cgroup import CgroupError
from agentcg.kernel.watch import Watcher

THROTTLE_EVENT_INTERVAL_S = 1.0  # at most one "throttled" push per call per second


class KernelEvents:
    def __init__(self, reg: Registry, escalation: Escalation) -> None:
        self.reg = reg
        self.escalation = escalation
        self.watcher: Watcher | None = None

    def start(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def close(self) -> None:
        if self.watcher:
            self.watcher.close()

    def watch(self, call: Call) -> None:
        assert self.watcher is not None
        path, call_id = self.reg.call_cg(call).path, call.id
        self.watcher.add(path / "memory.events", lambda _p: self._on_memory_events(call_id))
        self.watcher.add(path / "cgroup.events", lambda _p: self._on_cgroup_events(call_id))

    def unwatch(self, call: Call) -> None:
        if self.watcher:
            path = self.reg.call_cg(call).path
            self.watcher.remove(path / "memory.events")
            self.watcher.remove(path / "cgroup.events")

    def watch_session(self, sess: Session) -> None:
        if self.watcher and sess.memory is not None:
            name = sess.name
            self.watcher.add(
                self.reg.layout.session(name).path / "memory.events",
                lambda _p: self.escalation.on_session_memory_events(name),
            )

    def _on_memory_events(self, call_id: str) -> None:
        call = self.reg.calls.get(call_id)
        if call is None:
            return
        try:
            ev = self.reg.call_cg(call).memory_events()
        except (CgroupError, OSError):
            return
        now = time.monotonic()
        if ev.get("oom_kill", 0) > call.oom_kills:
            call.oom_kills = ev["oom_kill"]
            call.killed_reason = call.killed_reason or "oom"
            self.reg.push(
                call, "oom", {"oom_kills": call.oom_kills, "memory_max": call.limits.memory_max}
            )
        if ev.get("high", 0) > call.high_events:
            call.high_events = ev["high"]
            if now - call.last_throttle_push >= THROTTLE_EVENT_INTERVAL_S:
                call.last_throttle_push = now
                self.reg.push(
                    call,
                    "throttled",
                    {
                        "memory_high": call.limits.memory_high,
                        "memory_high_events": call.high_events,
                    },
                )

    def _on_cgroup_events(self, call_id: str) -> None:
        call = self.reg.calls.get(call_id)
        if call is None or call.state != "running":
            return
        try:
            if not self.reg.call_cg(call).populated:
                call.state = "exited"
        except (CgroupError, OSError):
            return

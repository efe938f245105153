"""The daemon's cgroup subtree: where sessions and calls live, and how they are made.

    <root>/supervisor/                      the daemon itself
    <root>/sessions/<session>/agent/        the adopted agent framework
    <root>/sessions/<session>/tools/<call>/ one leaf per tool call

Processes only ever live in leaves, so enabling the controllers at every inner level
never hits the no-internal-process rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from agentcg.core.errors import AgentcgError
from agentcg.core.model import Session
from agentcg.core.policy import CallLimits, cpu_quota
from agentcg.kernel.cgroup import Cgroup, CgroupError, find_cgroup2_mount

log = logging.getLogger("agentcg.daemon")

CONTROLLERS = ("memory", "cpu", "pids")
DRAIN_TIMEOUT_S = 5.0  # how long a killed subtree may take to empty


def _pass_protection(cg: Cgroup) -> None:
    """memory.low only protects a leaf as far as every ancestor's memory.low allows,
    unless cgroup2 is mounted with memory_recursiveprot. Inner levels pass it all
    through, so a call's priority-derived memory.low takes effect either way."""
    cg.write("memory.low", "max")


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = Cgroup(root)
        self.sessions = self.root.child("sessions")
        self.mount = find_cgroup2_mount() or Path("/sys/fs/cgroup")
        if not self.sessions.path.is_relative_to(self.mount):
            raise AgentcgError(
                "invalid_value",
                f"daemon.root {root} is not inside the cgroup2 mount {self.mount}; "
                "pick a root under it",
            )
        # cgroup paths as /proc/<pid>/cgroup shows them, relative to the mount
        self.sessions_prefix = f"/{self.sessions.path.relative_to(self.mount)}/"

    def session(self, name: str) -> Cgroup:
        return self.sessions.child(name)

    def call(self, session: str, call_id: str) -> Cgroup:
        return self.session(session).child("tools").child(call_id)

    def by_relative_path(self, cgroup: str) -> Cgroup:
        """A cgroup named as /proc/<pid>/cgroup names it."""
        return Cgroup(self.mount / cgroup.lstrip("/"))

    def setup(self) -> None:
        """Create the subtree and move the daemon into its supervisor leaf."""
        mount = find_cgroup2_mount()
        if mount is None or not (mount / "cgroup.controllers").exists():
            raise AgentcgError(
                "unavailable", "no cgroup v2 hierarchy is mounted: run `agentcg doctor`"
            )
        parent = Cgroup(self.root.path.parent)
        missing = set(CONTROLLERS) - parent.controllers()
        if missing:
            raise AgentcgError(
                "unavailable",
                f"cgroup {parent.path} lacks controllers "
                f"{', '.join(sorted(missing))}: run `agentcg doctor`",
            )
        if parent.path == mount:
            parent.enable_controllers(CONTROLLERS)
        elif set(CONTROLLERS) - parent.subtree_control():
            raise AgentcgError(
                "unavailable",
                f"{parent.path} does not delegate {', '.join(CONTROLLERS)}"
                " to its children: set Delegate=yes on the unit or pick another root",
            )
        self.root.create(exist_ok=True)
        supervisor = self.root.child("supervisor").create(exist_ok=True)
        supervisor.add_process(os.getpid())
        self.root.enable_controllers(CONTROLLERS)
        self.sessions.create(exist_ok=True)
        self.sessions.enable_controllers(CONTROLLERS)
        for cg in (self.root, self.sessions):
            _pass_protection(cg)

    def create_session(self, sess: Session) -> Cgroup:
        """The session's cgroup with its budget, agent/ and tools/; removed on failure.
        No memory.high on the session: it would throttle every call in it alike, the
        highest priority too; escalation holds back lower-priority calls instead."""
        scg = self.session(sess.name)
        try:
            scg.create()
            scg.enable_controllers(CONTROLLERS)
            scg.set_memory_max(sess.memory)
            scg.set_pids_max(sess.pids)
            if sess.cpu is not None:
                scg.set_cpu_max(cpu_quota(sess.cpu))
            scg.child("agent").create()
            tools = scg.child("tools").create()
            tools.enable_controllers(CONTROLLERS)
            for cg in (scg, tools):
                _pass_protection(cg)
        except (CgroupError, OSError) as e:
            self.remove(scg)
            raise AgentcgError(
                "internal", f"could not create session cgroup {scg.path}: {e}"
            ) from e
        return scg

    def create_call(self, session: str, call_id: str, limits: CallLimits) -> Cgroup:
        """The call's leaf with its limits; removed on failure."""
        ccg = self.call(session, call_id)
        try:
            ccg.create()
            ccg.set_memory_high(limits.memory_high)
            ccg.set_memory_max(limits.memory_max)
            ccg.set_memory_low(limits.memory_low)
            ccg.set_memory_min(limits.memory_min)
            ccg.set_cpu_weight(limits.cpu_weight)
            ccg.set_cpu_max(limits.cpu_max)
            ccg.set_pids_max(limits.pids_max)
            # An OOM inside the call takes the whole call, never a stray half of it.
            ccg.write("memory.oom.group", 1)
        except (CgroupError, OSError) as e:
            self.remove(ccg)
            raise AgentcgError(
                "internal", f"could not set up the call's cgroup {ccg.path}: {e}"
            ) from e
        return ccg

    @staticmethod
    async def drain(cg: Cgroup) -> None:
        """Kill what is left in a subtree and wait (without blocking) until it is empty."""
        with contextlib.suppress(CgroupError, OSError):
            if cg.populated:
                cg.kill()
                deadline = time.monotonic() + DRAIN_TIMEOUT_S
                while cg.populated and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)

    async def remove_async(self, cg: Cgroup) -> None:
        await self.drain(cg)
        self.remove(cg)

    @staticmethod
    def remove(cg: Cgroup) -> None:
        try:
            cg.remove_tree(kill=True, timeout=DRAIN_TIMEOUT_S)
        except (CgroupError, OSError) as e:
            log.error("could not remove %s: %s", cg.path, e)

"""The daemon's cgroup trees: where sessions and calls live, and how they are made.

    <root>/supervisor/                      the daemon itself
    <root>/sessions/<session>/agent/        the adopted agent framework
    <root>/sessions/<session>/tools/<call>/ one leaf per tool call
    <home>/agentcg/<session>/...            the same, for a session nested under the
                                            cgroup of the agent that opened it (homes.py)

Processes only ever live in leaves, so enabling the controllers at every inner level
never hits the no-internal-process rule. A session's home decides which tree it is in;
the controllers usable there decide which limits its calls get.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agentcg.core.caps import protection_budget
from agentcg.core.config import Config
from agentcg.core.errors import AgentcgError
from agentcg.core.model import Session
from agentcg.core.policy import CallLimits, cpu_quota
from agentcg.kernel.cgroup import Cgroup, CgroupError, find_cgroup2_mount

log = logging.getLogger("agentcg.daemon")

CONTROLLERS = ("memory", "cpu", "pids")
LEAF = "agentcg-leaf"  # a home's own processes
SUBTREE = "agentcg"  # a home's sessions
DEFAULT_CPU_WEIGHT = 100  # cpu.weight of a new cgroup
CALL_MEMO = 4096  # call cgroups remembered by Layout.call


def host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AgentcgError("unavailable", "no MemTotal in /proc/meminfo")


class Layout:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.root = Cgroup(cfg.daemon.root)
        self.sessions = self.root.child("sessions")
        self.mount = find_cgroup2_mount() or Path("/sys/fs/cgroup")
        if not self.sessions.path.is_relative_to(self.mount):
            raise AgentcgError(
                "invalid_value",
                f"daemon.root {cfg.daemon.root} is not inside the cgroup2 mount {self.mount}; "
                "pick a root under it",
            )
        # cgroup paths as /proc/<pid>/cgroup shows them, relative to the mount
        self.root_rel = f"/{self.root.path.relative_to(self.mount)}"
        self.sessions_prefix = f"{self.root_rel}/sessions/"
        self.homes: dict[str, str | None] = {}  # session -> its home (None: <root>/sessions)
        self.controllers: dict[str | None, frozenset[str]] = {None: frozenset(CONTROLLERS)}
        self._calls: dict[tuple[str, str | None, str], Cgroup] = {}  # see call()

    def home_cg(self, home: str) -> Cgroup:
        return Cgroup(self.mount / home.lstrip("/"))

    def sessions_of(self, home: str | None) -> Cgroup:
        return self.sessions if home is None else self.home_cg(home).child(SUBTREE)

    def session(self, name: str) -> Cgroup:
        return self.sessions_of(self.homes.get(name)).child(name)

    def call(self, session: str, call_id: str) -> Cgroup:
        # A pure function of its key, asked for many times per call: memoized, bounded.
        key = (session, self.homes.get(session), call_id)
        cg = self._calls.get(key)
        if cg is None:
            if len(self._calls) >= CALL_MEMO:
                self._calls.clear()
            cg = self._calls[key] = self.session(session).child("tools").child(call_id)
        return cg

    def by_relative_path(self, cgroup: str) -> Cgroup:
        """A cgroup named as /proc/<pid>/cgroup names it."""
        return Cgroup(self.mount / cgroup.lstrip("/"))

    def split_sessions(self, cgroup: str) -> tuple[str | None, str | None]:
        """(session, call) of a path inside <root>/sessions/, else (None, None)."""
        if not cgroup.startswith(self.sessions_prefix):
            return None, None
        parts = cgroup[len(self.sessions_prefix) :].split("/")
        call = parts[2] if len(parts) > 2 and parts[1] == "tools" else None
        return parts[0] or None, call

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

    def enter(self) -> None:
        """After the root is locked: the daemon into supervisor/, sessions/ ready, and
        the protection all sessions may claim bounded (never memory.low=max)."""
        supervisor = self.root.child("supervisor").create(exist_ok=True)
        supervisor.add_process(os.getpid())
        self.root.enable_controllers(CONTROLLERS)
        self.sessions.create(exist_ok=True)
        self.sessions.enable_controllers(CONTROLLERS)
        budget = protection_budget(self.cfg, host_memory(), self.ancestor_limit("memory.max"))
        self.root.set_memory_low(budget)
        self.sessions.write("memory.low", "max")  # bounded by the root's budget above
        log.info("memory protection of all sessions bounded to %d bytes", budget)

    def ancestor_limit(self, file: str, start: Cgroup | None = None) -> int | None:
        """The lowest `file` (memory.max, pids.max) from `start` (default: the root's
        parent) up to the mount; None if none is set."""
        cg = Cgroup(self.root.path.parent) if start is None else start
        lowest: int | None = None
        while cg.path != self.mount and cg.path.is_relative_to(self.mount):
            try:
                value = cg.read_int(file)
            except CgroupError:
                value = None  # the controller is not enabled at this level
            if value is not None and (lowest is None or value < lowest):
                lowest = value
            cg = Cgroup(cg.path.parent)
        return lowest

    def create_session(self, sess: Session) -> Cgroup:
        """The session's cgroup with its budget, agent/ and tools/; removed on failure.
        No memory.high on the session: it would throttle every call in it alike, the
        highest priority too; escalation holds back lower-priority calls instead."""
        usable = self.controllers.get(sess.home, frozenset())
        scg = self.session(sess.name)
        try:
            scg.create()
            scg.enable_controllers(sorted(usable))
            scg.set_memory_max(sess.memory if sess.memory is not None else sess.limit)
            scg.set_pids_max(sess.pids)
            if sess.cpu is not None and "cpu" in usable:
                scg.set_cpu_max(cpu_quota(sess.cpu))
            scg.child("agent").create()
            tools = scg.child("tools").create()
            tools.enable_controllers(sorted(usable))
            for cg in (scg, tools):
                cg.write("memory.low", "max")  # bounded by the levels above
        except (CgroupError, OSError) as e:
            if isinstance(e, CgroupError) and e.code == "conflict":
                raise AgentcgError(
                    "busy", f"session cgroup {scg.path} is still being removed; retry shortly"
                ) from e
            self.remove_now(scg)
            raise AgentcgError(
                "internal", f"could not create session cgroup {scg.path}: {e}"
            ) from e
        return scg

    def create_call(self, sess: Session, call_id: str, limits: CallLimits) -> Cgroup:
        """The call's leaf with its limits; removed on failure."""
        usable = self.controllers.get(sess.home, frozenset())
        ccg = self.call(sess.name, call_id)
        try:
            # A new cgroup starts with the kernel's defaults (no limits, no protection,
            # cpu.weight 100, memory.oom.group 0): only the limits that differ are written.
            ccg.create()
            if limits.memory_high is not None:
                ccg.set_memory_high(limits.memory_high)
            if limits.memory_max is not None:
                ccg.set_memory_max(limits.memory_max)
            if limits.memory_low:
                ccg.set_memory_low(limits.memory_low)
            if limits.memory_min:
                ccg.set_memory_min(limits.memory_min)
            if "cpu" in usable:
                if limits.cpu_weight != DEFAULT_CPU_WEIGHT:
                    ccg.set_cpu_weight(limits.cpu_weight)
                if limits.cpu_max is not None:
                    ccg.set_cpu_max(limits.cpu_max)
            if limits.pids_max is not None:
                ccg.set_pids_max(limits.pids_max)
            # An OOM inside the call takes the whole call, never a stray half of it.
            ccg.write("memory.oom.group", 1)
        except (CgroupError, OSError) as e:
            self.remove_now(ccg)
            raise AgentcgError(
                "internal", f"could not set up the call's cgroup {ccg.path}: {e}"
            ) from e
        return ccg

    @staticmethod
    def remove_now(cg: Cgroup) -> None:
        """rmdir an empty subtree just made (no waiting: nothing ever ran in it)."""
        try:
            cg.remove_tree(kill=False, timeout=0)
        except (CgroupError, OSError) as e:
            log.error("could not remove %s: %s", cg.path, e)

"""Where a peer's sessions live: always below the cgroup the peer came from.

A tool call must stay under every limit and BPF program (a container's memory.max and
device filter, a user slice's limits) that applied to the agent that began it, so its
cgroup is a descendant of the agent's own cgroup, the agent's *home*:

    <H>/                          the agent's cgroup: a container's, a login scope, ...
      agentcg-leaf/               H's own processes, moved here once (no-internal-process
                                  rule: H may then enable controllers for its children)
      agentcg/<session>/          as <root>/sessions/<session>/: agent/, tools/<call>/

A peer whose cgroup is the daemon's root or one of its ancestors (the host's root
cgroup, say) has the daemon's own tree as home (None here): <root>/sessions/ is already
below it. A peer inside a session (its agent/ leaf) has that session's home; a peer in
the leaf of a prepared home has that home. Prepared homes are recorded (state kind
"anchors") before anything moves, so a restarted daemon finds their sessions again.
Container runtimes follow the same rule for processes they add later: runc joins the
init process's cgroup (the leaf) when the container cgroup refuses processes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from agentcg.core.errors import AgentcgError
from agentcg.daemon.layout import CONTROLLERS, LEAF, SUBTREE, Layout
from agentcg.daemon.state import State
from agentcg.kernel.cgroup import Cgroup, CgroupError

log = logging.getLogger("agentcg.daemon")

MOVE_ATTEMPTS = 20  # processes may keep arriving in a home while we empty it
REQUIRED = ("memory", "pids")  # a session without these could not be bounded at all


@dataclass(frozen=True)
class Place:
    """What a cgroup path is to the daemon."""

    home: str | None  # the home it belongs to (None: the daemon's root)
    session: str | None = None  # inside this session's subtree
    call: str | None = None  # inside this tool call's leaf


def anchor_name(home: str) -> str:
    return "h" + hashlib.sha256(home.encode()).hexdigest()[:24]


class Homes:
    def __init__(self, layout: Layout, state: State) -> None:
        self.layout = layout
        self.state = state
        self.anchors: set[str] = set()  # prepared homes

    def load(self, records: dict[str, dict[str, str]]) -> None:
        """Prepared homes from their records; those whose cgroup is gone are dropped."""
        for name, rec in records.items():
            home = rec["path"]
            hcg = self.layout.home_cg(home)
            if name == anchor_name(home) and hcg.child(LEAF).exists():
                self.anchors.add(home)
                self._note_controllers(home, hcg)
            else:
                self.state.drop("anchors", name)

    def place(self, cgroup: str) -> Place:
        """Where the daemon's trees put a process whose cgroup path is `cgroup`."""
        root = self.layout.root_rel
        if cgroup == root or cgroup.startswith(root + "/"):
            where = self.layout.split_sessions(cgroup)
            home = self.layout.homes.get(where[0]) if where[0] else None
            return Place(home, *where)
        if root.startswith(cgroup.rstrip("/") + "/"):
            return Place(None)  # an ancestor of the daemon's root: its tree is below
        parts = cgroup.split("/")
        for i in range(len(parts) - 1, 0, -1):
            home = "/".join(parts[:i]) or "/"
            if home not in self.anchors:
                continue
            rest = parts[i:]
            if rest == [LEAF]:
                return Place(home)
            if rest[0] == SUBTREE:
                session = rest[1] if len(rest) > 1 else None
                call = rest[3] if len(rest) > 3 and rest[2] == "tools" else None
                return Place(home, session, call)
        return Place(cgroup)

    def prepare(self, home: str) -> None:
        """Make `home` hold sessions: move its processes into its leaf, enable the
        controllers for its children, create its agentcg/ subtree. Idempotent."""
        layout = self.layout
        hcg = layout.home_cg(home)
        if home in self.anchors and hcg.child(SUBTREE).exists():
            if home not in layout.controllers:
                self._note_controllers(home, hcg)
            return
        try:
            kind = hcg.read("cgroup.type").strip()
            if kind != "domain":
                raise AgentcgError(
                    "unavailable",
                    f"your cgroup {home} is of type {kind!r}; agentcg nests sessions only "
                    "under domain cgroups: run the agent in an ordinary cgroup",
                )
            usable = self._controllers(hcg, home)
            self.state.put("anchors", anchor_name(home), {"path": home})
            self.anchors.add(home)
            leaf = hcg.child(LEAF).create(exist_ok=True)
            self._empty_into(hcg, leaf, usable, home)
            sub = hcg.child(SUBTREE).create(exist_ok=True)
            sub.enable_controllers(usable)
            if "memory" in usable:
                sub.write("memory.low", "max")  # bounded by the home's own memory.low
        except CgroupError as e:
            raise AgentcgError(
                "unavailable", f"could not prepare your cgroup {home} for sessions: {e.message}"
            ) from None
        layout.controllers[home] = frozenset(usable)
        log.info("home %s prepared: its processes moved to %s", home, LEAF)

    def _note_controllers(self, home: str, hcg: Cgroup) -> None:
        """The controllers a prepared home gives its sessions (read back after a restart)."""
        try:
            enabled = hcg.subtree_control()
        except CgroupError:
            enabled = frozenset()
        self.layout.controllers[home] = frozenset(c for c in CONTROLLERS if c in enabled)

    def _controllers(self, hcg: Cgroup, home: str) -> tuple[str, ...]:
        available = hcg.controllers()
        missing = [c for c in REQUIRED if c not in available]
        if missing:
            raise AgentcgError(
                "unavailable",
                f"your cgroup {home} offers no {' or '.join(missing)} controller, so a session "
                "under it could not be bounded; ask the admin to enable it above your cgroup "
                "(systemd: Delegate= or MemoryAccounting=/TasksAccounting= on its slice)",
            )
        return tuple(c for c in CONTROLLERS if c in available)

    @staticmethod
    def _empty_into(hcg: Cgroup, leaf: Cgroup, usable: tuple[str, ...], home: str) -> None:
        for _ in range(MOVE_ATTEMPTS):
            for pid in hcg.procs():
                try:
                    leaf.add_process(pid)
                except CgroupError as e:
                    if e.code != "not_found":  # exited meanwhile
                        raise
            try:
                hcg.enable_controllers(usable)
                return
            except CgroupError as e:
                if e.code != "busy":
                    raise
        raise AgentcgError("busy", f"processes keep arriving in {home}; retry when it is quieter")

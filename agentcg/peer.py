"""Who is on the other end of a socket: SO_PEERCRED plus what /proc says about that pid."""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass

from agentcg.cgroup import cgroup_path_of_pid

# Docker's cgroupfs driver puts containers at /docker/<id>; the systemd driver at
# .../docker-<id>.scope. Either way the 64-hex id names the container.
_CONTAINER_RE = re.compile(r"(?:/docker/|/docker-)([0-9a-f]{64})(?:\.scope)?(?:/|$)")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    cgroup: str  # path relative to the cgroup2 mount, e.g. "/docker/<id>"
    container: str | None

    def as_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "uid": self.uid, "gid": self.gid, "container": self.container}


def container_of(cgroup: str) -> str | None:
    m = _CONTAINER_RE.search(cgroup)
    return m.group(1) if m else None


def peer_of(sock: socket.socket) -> Peer:
    """Identify the process that connected (the kernel vouches for pid/uid/gid)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    try:
        cg = cgroup_path_of_pid(pid)
    except Exception:
        cg = ""  # the peer already exited or is on a v1-only host; identity stays uid-based
    return Peer(pid, uid, gid, cg, container_of(cg))


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may contain spaces and parens: fields after the last ')' are fixed.
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def is_descendant(pid: int, ancestor: int, max_depth: int = 64) -> bool:
    """True if `ancestor` is `pid` itself or one of its ancestors."""
    for _ in range(max_depth):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        parent = parent_pid(pid)
        if parent is None:
            return False
        pid = parent
    return False

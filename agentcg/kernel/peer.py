"""Who is on the other end of a socket: SO_PEERCRED plus what /proc says about that pid."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
from dataclasses import dataclass

from agentcg.core.errors import AgentcgError
from agentcg.kernel.cgroup import cgroup_path_of_pid

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


SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux >= 6.5


class PeerGone(Exception):
    """The process that opened the connection no longer exists."""


class PeerHandle:
    """The connecting process, pinned by a pidfd so a recycled pid is never mistaken
    for it. Its cgroup is re-read for every request: processes move (adoption,
    attach), and identity must follow where the process is now."""

    def __init__(self, sock: socket.socket) -> None:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid, self.uid, self.gid = struct.unpack("3i", raw)
        try:
            self.pidfd = struct.unpack("i", sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
        except OSError:  # older kernel: open it now; the pid was just vouched for
            try:
                self.pidfd = os.pidfd_open(self.pid)
            except OSError as e:
                raise PeerGone(f"pid {self.pid} exited before it could be identified") from e

    def current(self) -> Peer:
        """Who the peer is now; raises PeerGone rather than guess (fail closed)."""
        try:
            cg = cgroup_path_of_pid(self.pid)
            signal.pidfd_send_signal(self.pidfd, 0)  # still the same process?
        except (OSError, AgentcgError) as e:
            raise PeerGone(f"pid {self.pid} that opened this connection is gone") from e
        return Peer(self.pid, self.uid, self.gid, cg, container_of(cg))

    def close(self) -> None:
        os.close(self.pidfd)


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

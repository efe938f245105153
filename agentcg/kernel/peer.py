"""Who is on the other end of a socket: SO_PEERCRED plus what /proc says about that pid.

Identity comes from the kernel only. "Inside a container" means the peer's pid, mount,
user or cgroup namespace differs from the daemon's (read through /proc/<pid>/ns, the
process pinned by a pidfd); it is never guessed from a cgroup path, which anyone with
a delegated subtree can shape. The container id found in the cgroup path is a label
for sessions and metrics, and counts only where a root-owned cgroup carries it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from agentcg.core.errors import AgentcgError
from agentcg.kernel.cgroup import (
    Cgroup,
    cgroup_path_of_pid,
    find_cgroup2_mount,
    parse_proc_cgroup,
)
from agentcg.kernel.process import parse_stat, stat_fields

NAMESPACES = ("pid", "mnt", "user", "cgroup")

# Where container runtimes put a container's cgroup (the id or name is the label):
# Docker (cgroupfs /docker/<id>, systemd docker-<id>.scope), Podman (libpod-<id>),
# containerd and CRI-O under Kubernetes (cri-containerd-<id>, crio-<id>, kubepods/.../<id>),
# LXC (lxc.payload.<name>) and systemd-nspawn (machine-<name>.scope).
_LABEL_RE = re.compile(
    r"/(?:(?:docker|libpod|cri-containerd|crio)-(?P<scope>[0-9a-f]{64})\.scope"
    r"|(?:docker|libpod)/(?P<dir>[0-9a-f]{64})"
    r"|libpod-(?P<pod>[0-9a-f]{64})"
    r"|kubepods[^/]*(?:/[^/]+)*?/(?P<kube>[0-9a-f]{64})"
    r"|lxc\.payload\.(?P<lxc>[A-Za-z0-9_.-]{1,64})"
    r"|machine-(?P<machine>[A-Za-z0-9_-]{1,64})\.scope)"
    r"(?=/|$)"
)


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    cgroup: str  # path relative to the cgroup2 mount, e.g. "/docker/<id>"
    container: str | None  # a label only: never grants anything
    # In a pid/mnt/user/cgroup namespace other than the daemon's; None: not read yet.
    # Only admin decisions need it (four stats per read), so it is read on first use.
    ns_confined: bool | None = field(default=None, compare=False)
    pidfd: int = field(default=-1, compare=False)  # pins the process while it is connected

    @property
    def confined(self) -> bool:
        """Whether its namespaces differ from the daemon's, read from /proc through the
        pidfd when first asked (fail closed: True if that cannot be done)."""
        if self.ns_confined is None:
            gone = PeerGone(f"pid {self.pid} is gone")
            try:
                confined = _read_namespaces(self.pid, self.pidfd, gone) != own_namespaces()
            except (PeerGone, OSError):
                confined = True
            object.__setattr__(self, "ns_confined", confined)  # a cache of a fact
        return bool(self.ns_confined)

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "uid": self.uid,
            "gid": self.gid,
            "container": self.container,
            "confined": self.confined,
        }


def label_candidates(cgroup: str) -> list[tuple[str, str]]:
    """(cgroup path that carries a container id or name, the label), outermost first."""
    found = []
    for m in _LABEL_RE.finditer(cgroup):
        label = next(v for v in m.groupdict().values() if v)
        found.append((cgroup[: m.end()], label))
    return found


def container_of(cgroup: str, mount: Path | None = None) -> str | None:
    """The container label of a cgroup path: the outermost runtime-shaped component,
    and (given the cgroup2 mount) only if root owns that cgroup, so a user with a
    delegated subtree cannot name a directory after someone else's container."""
    for path, label in label_candidates(cgroup):
        if mount is None:
            return label
        try:
            if os.stat(mount / path.lstrip("/")).st_uid == 0:
                return label
        except OSError:
            continue
    return None


@cache
def own_namespaces() -> tuple[tuple[int, int], ...]:
    proc = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _namespaces(proc)
    finally:
        os.close(proc)


@cache
def _cgroup2_mount() -> Path | None:
    """The daemon's cgroup2 mount, read once: its mounts do not move while it runs."""
    return find_cgroup2_mount()


def _namespaces(proc_fd: int) -> tuple[tuple[int, int], ...]:
    """(st_dev, st_ino) of each namespace in NAMESPACES of the /proc/<pid> dir proc_fd."""
    return tuple(
        (st.st_dev, st.st_ino)
        for st in (os.stat(f"ns/{kind}", dir_fd=proc_fd) for kind in NAMESPACES)
    )


SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux >= 6.5
_TICKS = os.sysconf("SC_CLK_TCK")


class PeerGone(Exception):
    """The process that opened the connection no longer exists."""


def _alive(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, only not ours to signal
        return True
    return True


class PeerHandle:
    """The connecting process, pinned by a pidfd so a recycled pid is never mistaken
    for it. Its cgroup is re-read for every request, its namespaces whenever a request's
    decision needs them (Peer.confined): processes move (adoption, attach) and unshare,
    and identity must follow where the process is now."""

    def __init__(self, sock: socket.socket) -> None:
        accepted = time.clock_gettime(time.CLOCK_BOOTTIME)
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid, self.uid, self.gid = struct.unpack("3i", raw)
        self._label: tuple[str, str | None] | None = None
        try:
            self.pidfd = struct.unpack("i", sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
            return
        except OSError:
            pass
        # Older kernel: pin the pid now, before anything can stall, then make sure the
        # pinned process is not a newer one that got the number after the peer exited.
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError as e:
            raise PeerGone(f"pid {self.pid} exited before it could be identified") from e
        try:
            newer = int(stat_fields(self.pid)[19]) > accepted * _TICKS
        except (OSError, ValueError, IndexError):
            newer = True
        if newer or not _alive(self.pidfd):
            os.close(self.pidfd)
            raise PeerGone(f"pid {self.pid} exited before it could be identified")

    def current(self) -> Peer:
        """Who the peer is now; raises PeerGone rather than guess (fail closed)."""
        gone = PeerGone(f"pid {self.pid} that opened this connection is gone")
        cg, _ = _read_pinned(self.pid, self.pidfd, gone)
        return Peer(self.pid, self.uid, self.gid, cg, self._container(cg), None, self.pidfd)

    def _container(self, cg: str) -> str | None:
        if self._label is None or self._label[0] != cg:
            self._label = (cg, container_of(cg, _cgroup2_mount()))
        return self._label[1]

    def close(self) -> None:
        os.close(self.pidfd)


def pin_child(parent: Peer, pid: int) -> Peer:
    """`pid`, a child of the connected `parent` waiting before its exec, as a Peer of its
    own: pinned by a pidfd, its cgroup, namespaces and ids read from /proc like a
    connected peer's, so every check that applies to a process attaching itself applies
    to it unchanged. The parent names it; the kernel says whose child it is. A child in
    the middle of switching users (real, effective, saved and filesystem ids not all
    equal) is refused. unpin() the returned peer when done."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        raise PeerGone(f"pid {pid} does not exist") from e
    try:
        return _child_of(parent, pid, pidfd)
    except BaseException:
        os.close(pidfd)
        raise


def unpin(peer: Peer) -> None:
    """Close a pin_child() peer's pidfd. Its namespaces, if not read by then, count as
    confined from now on: a closed pidfd proves nothing."""
    if peer.ns_confined is None:
        object.__setattr__(peer, "ns_confined", True)
    os.close(peer.pidfd)


def _child_of(parent: Peer, pid: int, pidfd: int) -> Peer:
    gone = PeerGone(f"pid {pid} exited before it could be identified")
    cg, (stat, status) = _read_pinned(pid, pidfd, gone, "stat", "status")
    try:
        ppid = int(parse_stat(stat)[1])
        ids = _status_ids(status)
    except (ValueError, IndexError, KeyError) as e:
        raise gone from e
    if ppid != parent.pid:
        raise AgentcgError(
            "unauthorized",
            f"pid {pid} is not a child of pid {parent.pid} (the process asking); "
            "only a process's own waiting children can be attached by pid",
        )
    uids, gids, tgid = ids
    if tgid != pid:
        raise AgentcgError("unauthorized", f"{pid} is a thread id, not a process; nothing moved")
    if len(set(uids)) != 1 or len(set(gids)) != 1:
        raise AgentcgError(
            "unauthorized", f"pid {pid} is switching user or group ids; it cannot be attached"
        )
    return Peer(
        pid,
        uids[0],
        gids[0],
        cg,
        container_of(cg, _cgroup2_mount()),
        None,
        pidfd,
    )


def _proc_dir(pid: int, pidfd: int, gone: PeerGone) -> int:
    """A /proc/<pid> directory fd of the process pinned by `pidfd`; `gone` if it cannot
    be had. The dir fd stays bound to the process it was opened for; the pidfd check
    after opening it proves that process is still the pinned one."""
    try:
        proc = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise gone from e
    try:
        # proc == pidfd: the pidfd was closed and its number reused by this open (a
        # /proc/<pid> dir fd passes pidfd_send_signal too): no proof at all.
        if proc == pidfd or not _alive(pidfd):
            raise gone
    except BaseException:
        os.close(proc)
        raise
    return proc


def _read_pinned(pid: int, pidfd: int, gone: PeerGone, *files: str) -> tuple[str, list[bytes]]:
    """The cgroup of the process pinned by `pidfd` and its /proc files named in
    `files`, read through one _proc_dir; `gone` if they cannot be."""
    proc = _proc_dir(pid, pidfd, gone)
    try:
        read = [_read_at(proc, name) for name in files]
        cg = _read_cgroup(proc)
    except OSError as e:
        raise gone from e
    finally:
        os.close(proc)
    if cg is None:
        raise gone
    return cg, read


def _read_namespaces(pid: int, pidfd: int, gone: PeerGone) -> tuple[tuple[int, int], ...]:
    proc = _proc_dir(pid, pidfd, gone)
    try:
        return _namespaces(proc)
    except OSError as e:
        raise gone from e
    finally:
        os.close(proc)


def _read_at(proc_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _status_ids(status: bytes) -> tuple[list[int], list[int], int]:
    """(real, effective, saved, filesystem) uids and gids, and the thread group id,
    from /proc/<pid>/status."""
    found: dict[bytes, list[int]] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(b":")
        if key in (b"Uid", b"Gid", b"Tgid"):
            found[key] = [int(x) for x in rest.split()]
    return found[b"Uid"], found[b"Gid"], found[b"Tgid"][0]


def _read_cgroup(proc_fd: int) -> str | None:
    return parse_proc_cgroup(_read_at(proc_fd, "cgroup").decode(errors="replace"))


def move_pinned(target: Cgroup, peer: Peer) -> None:
    """Move the peer's process into `target` by pid, proving with its pidfd that the pid
    still named it before the write and after it. cgroup.procs only takes pid numbers:
    should the peer die and its number be reused around the write, the stranger that
    got moved goes back to its parent's cgroup (where a new process starts) and the
    move fails closed."""
    if peer.pidfd < 0 or not _alive(peer.pidfd):
        raise PeerGone(f"pid {peer.pid} is gone; nothing was moved")
    target.add_process(peer.pid)
    if _alive(peer.pidfd):
        return
    with contextlib.suppress(OSError, AgentcgError, ValueError):
        if peer.pid in target.procs():
            parent = parent_pid(peer.pid)
            mount = find_cgroup2_mount()
            if parent is not None and mount is not None:
                Cgroup(mount / cgroup_path_of_pid(parent).lstrip("/")).add_process(peer.pid)
    raise PeerGone(f"pid {peer.pid} exited while it was being moved")


def parent_pid(pid: int) -> int | None:
    try:
        return int(stat_fields(pid)[1])
    except OSError:
        return None


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

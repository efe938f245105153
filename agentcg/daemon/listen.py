"""The listening socket, made so that nobody but the daemon decides what it is.

The socket's directory is the one thing agents get (containers bind-mount it, read-only
is enough to connect), so it holds nothing else, must be ours and writable by nobody
else, and is opened without following symlinks. The socket is bound under a temporary
name inside that directory (through the directory fd, so a swapped parent cannot
redirect it), created with its final mode, given its group without following links, and
renamed over the public name: a stale socket of a killed daemon is replaced atomically,
clients never see the name missing, and a live daemon on it is refused.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import stat
from pathlib import Path

from agentcg.core.errors import AgentcgError
from agentcg.daemon.state import open_checked_dir


def bind_socket(path: Path, gid: int, mode: int, backlog: int = 1024) -> socket.socket:
    """A listening Unix socket at `path` (group `gid`, -1 to keep ours; mode `mode`)."""
    dir_fd = open_checked_dir(path.parent, private=False)
    try:
        _refuse_live(dir_fd, path)
        tmp = f".{path.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o777 & ~mode)
            try:
                sock.bind(f"/proc/self/fd/{dir_fd}/{tmp}")
            finally:
                os.umask(old)
            os.chown(tmp, -1, gid, dir_fd=dir_fd, follow_symlinks=False)
            _chmod_exact(dir_fd, tmp, mode)
            sock.listen(backlog)
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)
    sock.setblocking(False)
    return sock


def _refuse_live(dir_fd: int, path: Path) -> None:
    try:
        st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise AgentcgError("conflict", f"{path} is a directory; remove it or pick another socket")
    if not stat.S_ISSOCK(st.st_mode):
        return  # replaced by the rename, never followed
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(f"/proc/self/fd/{dir_fd}/{path.name}")
    except OSError:
        return  # left by a daemon that died: the rename takes its place
    finally:
        probe.close()
    raise AgentcgError("conflict", f"another daemon is serving {path}; stop it first")


def _chmod_exact(dir_fd: int, name: str, mode: int) -> None:
    """chmod without following a symlink: through an O_PATH fd of the file itself."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise AgentcgError("conflict", f"{name} is not our socket; something replaced it")
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


FDS_PER_CONNECTION = 2  # the socket and the peer's pidfd
FDS_SPARE = 64  # state directories, the locks, inotify, epoll, a /proc dirfd per request


def ensure_fd_budget(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE so every allowed connection fits; refuse to start
    if the hard limit cannot hold them (a daemon out of fds fails everyone at once)."""
    need = max_connections * FDS_PER_CONNECTION + FDS_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise AgentcgError(
            "unavailable",
            f"daemon.max_connections {max_connections} needs {need} file descriptors but "
            f"the limit is {hard}: raise LimitNOFILE (ulimit -n) or lower max_connections",
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

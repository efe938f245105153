"""One daemon per state directory and cgroup root, decided before anything is touched.

The daemon takes an exclusive flock on ``daemon.lock`` in its private state directory
first thing, and holds it for its whole life; a second daemon finds it held and refuses
with the running daemon's pid, before it reads a record or touches cgroupfs. Then it
locks its cgroup root directory the same way, so two daemons with different state
directories cannot share one root and kill each other's calls as orphans. The kernel
drops both locks when the process dies, however it dies, so a daemon killed with -9
never blocks its successor.

The sched_ext scheduler is one per host, so whichever daemon runs it holds a third,
host-wide lock (``SCHED_LOCK``) while it does: another daemon on the host (a test's, a
benchmark's) leaves it alone instead of replacing it, and a successor of a daemon that
died finds the lock free and takes over the scheduler it left pinned.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable

from agentcg.core.errors import AgentcgError

LOCK_FILE = "daemon.lock"
SCHED_LOCK = "/run/agentcg-sched.lock"
_PID_FILE = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class DaemonLock:
    def __init__(self, fd: int, what: str) -> None:
        self.fd = fd
        self.what = what

    @classmethod
    def state_dir(cls, dir_fd: int, where: str) -> DaemonLock:
        """Lock the state directory (given as an fd from State.open); record our pid."""
        fd = os.open(LOCK_FILE, _PID_FILE, 0o600, dir_fd=dir_fd)
        return cls._pid_file(fd, where, _running_on(f"state directory {where}"))

    @classmethod
    def cgroup_root(cls, path: str) -> DaemonLock:
        """Lock the (existing) cgroup root directory; the daemon holding it is the
        process in its supervisor/ leaf."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _take(fd, lambda: _supervisor_pid(path), _running_on(f"cgroup root {path}"))
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    @classmethod
    def scheduler(cls, path: str = SCHED_LOCK) -> DaemonLock:
        """The right to run the host's sched_ext scheduler; records our pid."""
        fd = os.open(path, _PID_FILE, 0o600)
        return cls._pid_file(
            fd,
            path,
            lambda who: (
                f"another agentcg daemon{who} runs the sched_ext scheduler on this host; "
                "this one's calls use the fair class until it stops"
            ),
        )

    @classmethod
    def _pid_file(cls, fd: int, what: str, conflict: Callable[[str], str]) -> DaemonLock:
        """Lock a file that names its holder: take it, then write our pid into it."""
        try:
            _take(fd, lambda: _read_pid(fd), conflict)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, what)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _take(fd: int, holder_pid: Callable[[], int | None], conflict: Callable[[str], str]) -> None:
    """flock ``fd`` or raise ``conflict`` with " (pid N)" of the holder, when known."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        pid = holder_pid()
        raise AgentcgError("conflict", conflict(f" (pid {pid})" if pid else "")) from None


def _running_on(what: str) -> Callable[[str], str]:
    return lambda who: (
        f"another agentcg daemon{who} is running on {what}; stop it first "
        "or give this one its own daemon.state_dir and daemon.root"
    )


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _supervisor_pid(root: str) -> int | None:
    try:
        with open(os.path.join(root, "supervisor", "cgroup.procs")) as f:
            pids = f.read().split()
    except OSError:
        return None
    return int(pids[0]) if pids else None

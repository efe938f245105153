"""Memory trouble without BPF: one epoll fd on the asyncio loop for cgroup files that
signal with POLLPRI.

- ``memory.events.local``: the kernel notifies pollers (POLLPRI|POLLERR) when a counter
  of this cgroup changes (high, max, oom, oom_kill), at most about every 10 ms per file.
  The file must be read again to re-arm, which ``_drain`` does before the callback.
- PSI triggers on ``memory.pressure``: writing "some <stall_us> <window_us>" arms a
  trigger that raises POLLPRI once per window in which tasks of the cgroup stalled on
  memory for at least stall_us. With CAP_SYS_RESOURCE windows may be well under a
  second; each such trigger costs the kernel a polling thread per cgroup.
  Polling a trigger consumes its event, and an epoll nested in another one (ours in
  the asyncio loop's) is polled twice: once by the outer readiness check, which takes
  the event, then by our own ``poll``, which finds none. So each trigger gets an epoll
  of its own, and that epoll turning readable *is* the trigger firing.

This is the fallback of the BPF probe (agentcg/bpf/memwatch.py): slower (the notify
rate limit, a read per event) and blind to why reclaim stalls, but it needs nothing
beyond cgroup v2 and PSI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from collections.abc import Callable
from pathlib import Path

_MASK = select.EPOLLPRI | select.EPOLLERR


class PollWatcher:
    """Calls ``callback(path)`` when a watched file signals: one epoll fd for the event
    files, one per PSI trigger."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ep = select.epoll()
        self._loop = loop
        self._by_fd: dict[int, tuple[Path, Callable[[Path], None]]] = {}
        self._by_path: dict[Path, int] = {}
        self._triggers: dict[Path, tuple[int, select.epoll]] = {}
        loop.add_reader(self._ep.fileno(), self._drain)

    def add_events(self, path: Path, callback: Callable[[Path], None]) -> None:
        """Watch a cgroup event file (memory.events.local, cgroup.events)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        os.pread(fd, 4096, 0)  # arm: only changes after this read signal
        self.remove(path)
        try:
            self._ep.register(fd, _MASK)
        except OSError:
            os.close(fd)
            raise
        self._by_fd[fd] = (path, callback)
        self._by_path[path] = fd

    def add_pressure(
        self, path: Path, stall_us: int, window_us: int, callback: Callable[[Path], None]
    ) -> None:
        """Arm a PSI trigger on a pressure file (memory.pressure): "some" stalls of at
        least ``stall_us`` within ``window_us``. OSError when the kernel refuses it
        (EINVAL: window out of range for our privileges; EPERM/EACCES)."""
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, f"some {stall_us} {window_us}\0".encode())
        except OSError:
            os.close(fd)
            raise
        self.remove(path)
        try:
            ep = select.epoll()
        except OSError:
            os.close(fd)
            raise
        try:
            ep.register(fd, _MASK)
        except OSError:
            ep.close()
            os.close(fd)
            raise
        self._triggers[path] = (fd, ep)
        self._loop.add_reader(ep.fileno(), self._fired, path, callback)

    def _fired(self, path: Path, callback: Callable[[Path], None]) -> None:
        # The loop's readiness check already took the trigger's event; this poll only
        # empties our epoll's ready list so the loop stops reporting it. Removing the
        # cgroup destroys the trigger, which signals (POLLERR) from then on: drop it.
        self._triggers[path][1].poll(0)
        if not path.exists():
            self.remove(path)
            return
        callback(path)

    def remove(self, path: Path) -> None:
        trigger = self._triggers.pop(path, None)
        if trigger is not None:
            trigger_fd, ep = trigger
            self._loop.remove_reader(ep.fileno())
            ep.close()
            os.close(trigger_fd)
        fd = self._by_path.pop(path, None)
        if fd is None:
            return
        self._by_fd.pop(fd, None)
        with contextlib.suppress(OSError):
            self._ep.unregister(fd)
        os.close(fd)

    def paths(self) -> set[Path]:
        return set(self._by_path) | set(self._triggers)

    def _drain(self) -> None:
        for fd, _mask in self._ep.poll(0):
            entry = self._by_fd.get(fd)
            if entry is None:
                continue
            path, callback = entry
            # A removed cgroup's event file gives ENODEV if it signals: drop it.
            try:
                os.pread(fd, 4096, 0)
            except OSError:
                self.remove(path)
                continue
            callback(path)

    def close(self) -> None:
        self._loop.remove_reader(self._ep.fileno())
        for path in self.paths():
            self.remove(path)
        self._ep.close()

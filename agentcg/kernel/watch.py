"""Event-driven cgroup file watching with one inotify fd on the asyncio loop.

cgroup.events and memory.events raise IN_MODIFY when they change, so the daemon
learns of "populated 0", memory.high breaches and OOM kills as the kernel
reports them instead of polling (systemd-oomd polls every second).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
IN_MODIFY = 0x00000002
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")


class Watcher:
    """Calls `callback(path)` whenever a watched file is modified."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        self._loop = loop
        self._by_wd: dict[int, tuple[str, Callable[[str], None]]] = {}
        self._by_path: dict[str, int] = {}
        loop.add_reader(fd, self._drain)

    def add(self, path: str, callback: Callable[[str], None]) -> None:
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), IN_MODIFY)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        self._by_wd[wd] = (path, callback)
        self._by_path[path] = wd

    def remove(self, path: str) -> None:
        wd = self._by_path.pop(path, None)
        if wd is not None:
            self._by_wd.pop(wd, None)
            _libc.inotify_rm_watch(self._fd, wd)  # fails harmlessly if the cgroup is gone

    def _drain(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        seen: set[int] = set()
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            if mask & IN_IGNORED:  # the file went away with its cgroup
                entry = self._by_wd.pop(wd, None)
                if entry:
                    self._by_path.pop(entry[0], None)
                continue
            seen.add(wd)  # coalesce a burst of writes into one callback
        for wd in seen:
            entry = self._by_wd.get(wd)
            if entry:
                entry[1](entry[0])

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)

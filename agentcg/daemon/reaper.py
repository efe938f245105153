"""Removing cgroups without ever blocking the event loop.

A tool in uninterruptible sleep (a frozen filesystem, a hung FUSE server, NFS) ignores
cgroup.kill until it wakes, so its cgroup cannot be removed yet. Every wait here is
asynchronous: the kernel's "populated 0" in cgroup.events arrives through the inotify
watcher, never by sleeping on the loop. A subtree still busy when its caller stops
waiting becomes a leftover: it is retried whenever its cgroup.events changes and on a
slow timer, in the background, until it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os

from agentcg.kernel.cgroup import Cgroup, CgroupError
from agentcg.kernel.watch import Watcher

log = logging.getLogger("agentcg.daemon")

RETRY_S = 5.0  # leftovers are also retried this often (inotify is the fast path)


class Reaper:
    def __init__(self) -> None:
        self.watcher: Watcher | None = None
        self.leftovers: dict[str, Cgroup] = {}  # by Cgroup.dir
        self._timer: asyncio.TimerHandle | None = None

    def start(self, watcher: Watcher) -> None:
        self.watcher = watcher

    async def drain(self, cg: Cgroup, timeout: float) -> bool:
        """Kill what is left in a subtree and wait up to `timeout` seconds for it to be
        empty; True once it is (or it is gone)."""
        try:
            if not cg.populated:
                return True
            cg.kill()
        except (CgroupError, OSError):
            return not cg.exists()
        return await self._wait_empty(cg, timeout)

    async def remove(self, cg: Cgroup, timeout: float) -> None:
        """Remove a subtree: at once if nothing runs in it (no kill, no wait), else
        drain it first; if it cannot go yet it is left to the background."""
        if self._rmdir_tree(cg):
            return
        await self.drain(cg, timeout)
        self.discard(cg)

    def discard(self, cg: Cgroup) -> None:
        """Remove a (drained) subtree now if it can go, else in the background."""
        if not self._rmdir_tree(cg):
            self.later(cg)

    def later(self, cg: Cgroup) -> None:
        """Remove a subtree in the background (killing what is in it) whenever it can go."""
        if cg.dir in self.leftovers or not cg.exists():
            return
        log.warning("%s is not empty yet (a task in uninterruptible sleep?); retrying", cg.dir)
        self.leftovers[cg.dir] = cg
        with contextlib.suppress(CgroupError, OSError):
            cg.kill()
        if self.watcher:
            with contextlib.suppress(OSError):
                self.watcher.add(cg.file("cgroup.events"), lambda _p: self._retry(cg.dir))
        self._arm()

    def _arm(self) -> None:
        if self._timer is None and self.leftovers:
            self._timer = asyncio.get_running_loop().call_later(RETRY_S, self._retry_all)

    def _retry_all(self) -> None:
        self._timer = None
        for path in list(self.leftovers):
            self._retry(path)
        self._arm()

    def _retry(self, path: str) -> None:
        cg = self.leftovers.get(path)
        if cg is None:
            return
        with contextlib.suppress(CgroupError, OSError):
            if cg.populated:
                cg.kill()
                return
        if self._rmdir_tree(cg):
            del self.leftovers[path]
            if self.watcher:
                self.watcher.remove(cg.file("cgroup.events"))
            log.info("removed leftover %s", path)

    async def _wait_empty(self, cg: Cgroup, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        path = cg.file("cgroup.events")

        def check(_p: str | None = None) -> None:
            try:
                empty = not cg.populated
            except (CgroupError, OSError):
                empty = True  # removed under us
            if empty and not done.done():
                done.set_result(True)

        if self.watcher is None or cg.dir in self.leftovers:
            return False
        try:
            self.watcher.add(path, check)
        except OSError:
            return not cg.exists()
        try:
            check()  # it may have emptied before the watch was in place
            return await asyncio.wait_for(done, timeout)
        except TimeoutError:
            return False
        finally:
            self.watcher.remove(path)

    @staticmethod
    def _rmdir_tree(cg: Cgroup) -> bool:
        """rmdir deepest first, without waiting; False if something is still busy."""
        try:
            os.rmdir(cg.dir)  # a leaf, as a call's cgroup nearly always is: no walk
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                log.error("could not remove %s: %s", cg.path, e.strerror)
                return False
        for c in reversed(list(_walk(cg))):
            try:
                os.rmdir(c.dir)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    return False
                log.error("could not remove %s: %s", c.path, e.strerror)
                return False
        return True


def _walk(cg: Cgroup) -> list[Cgroup]:
    out = [cg]
    for child in cg.children():
        out.extend(_walk(child))
    return out

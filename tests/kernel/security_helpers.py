"""Attackers for the security tests: peers forked into a chosen cgroup, namespaces and
uid (no re-import under TCG), and fake container cgroups with real limits."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agentcg.devtools import daemonproc
from agentcg.kernel.cgroup import Cgroup, find_cgroup2_mount
from tests.kernel.test_robustness import WAIT_S, Chan, Raw

# These tests restart daemons; on a loaded emulated VM its imports alone took 2 minutes.
daemonproc.START_TIMEOUT_S = max(daemonproc.START_TIMEOUT_S, 600.0)

CONTROLLERS = ("memory", "cpu", "pids")
NOBODY = 65534
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUSER = 0x00020000, 0x02000000, 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)


def mount() -> Path:
    m = find_cgroup2_mount()
    assert m is not None
    return m


@contextlib.contextmanager
def scratch(name: str) -> Iterator[Cgroup]:
    """A cgroup under the root with memory, cpu and pids for its children."""
    top = Cgroup(mount())
    top.enable_controllers(CONTROLLERS)
    base = top.child(f"agentcg-{name}-{secrets.token_hex(3)}").create()
    try:
        base.enable_controllers(CONTROLLERS)
        yield base
    finally:
        base.remove_tree(kill=True, timeout=60)


def fake_container(base: Cgroup, memory_max: int, label: str | None = None) -> Cgroup:
    """<base>/docker/<id> as Docker's cgroupfs driver makes it, with memory.max."""
    docker = base.child("docker").create(exist_ok=True)
    docker.enable_controllers(CONTROLLERS)
    ctr = docker.child(label or secrets.token_hex(32)).create()
    ctr.set_memory_max(memory_max)
    return ctr


def relative(cg: Cgroup) -> str:
    return "/" + str(cg.path.relative_to(mount()))


class Peer:
    """fn(chan) in a forked child placed into `cgroup` (as root), then into new
    namespaces (`unshare` flags), then made `uid`. The child always ends with _exit."""

    def __init__(
        self,
        fn: Callable[[Chan], None],
        cgroup: Cgroup | None = None,
        unshare: int = 0,
        uid: int | None = None,
    ) -> None:
        import socket

        mine, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            status = 0
            try:
                mine.close()
                if cgroup is not None:
                    cgroup.add_process(os.getpid())
                if unshare and _libc.unshare(unshare) != 0:
                    raise OSError(ctypes.get_errno(), "unshare")
                if uid is not None:
                    os.setgroups([])
                    os.setresgid(uid, uid, uid)
                    os.setresuid(uid, uid, uid)
                fn(Chan(theirs))
            except BaseException as e:
                status = 1
                with contextlib.suppress(BaseException):
                    Chan(theirs).send({"crash": repr(e)})
            finally:
                os._exit(status)
        theirs.close()
        self.chan = Chan(mine)

    def recv(self) -> Any:
        msg = self.chan.recv(WAIT_S * 4)
        assert not (isinstance(msg, dict) and "crash" in msg), msg
        return msg

    def send(self, obj: Any) -> None:
        self.chan.send(obj)

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def codes(d: Any, requests: list[tuple[str, dict[str, Any]]]) -> Callable[[Chan], None]:
    """A peer body: send each request on one raw connection, report the replies."""

    def body(chan: Chan) -> None:
        out = []
        with Raw(d) as r:
            for op, args in requests:
                reply = r.request(op, **args)
                out.append(reply["result"] if reply["ok"] else reply["error"]["code"])
        chan.send(out)

    return body

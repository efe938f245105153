"""Issue 7, Mediums 4 and 7: a tool that cannot die (uninterruptible sleep on a frozen
filesystem) blocks nobody else, its cgroup is removed once it can be, recovery does not
wait for it and the reclaim grace starts when the socket is up; a recycled pid is never
moved into a call."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentcg.client import Client
from agentcg.kernel.cgroup import Cgroup
from agentcg.kernel.peer import Peer as KernelPeer
from agentcg.kernel.peer import PeerGone, move_pinned
from tests.kernel.daemon_fixture import RunningDaemon
from tests.kernel.security_helpers import Peer, scratch
from tests.kernel.test_robustness import Chan, Raw, wait_until

# These tests stop, kill or restart their daemon: each gets its own.
pytestmark = [pytest.mark.kernel, pytest.mark.fresh_daemon]

HELLO_BOUND_S = 3.0  # far above a normal round trip, below the 5 s a blocked loop took
GRACE_S = 5.0  # reclaim_grace_s of the test fixture


@contextlib.contextmanager
def freezable() -> Iterator[Path]:
    """A small ext4 on a loop device, to be frozen with fsfreeze: a process writing to
    it then sleeps uninterruptibly (D state) and ignores SIGKILL until the thaw."""
    tag = secrets.token_hex(3)
    img, mnt = Path(f"/dev/shm/agentcg-{tag}.img"), Path(f"/run/agentcg-freeze-{tag}")
    subprocess.run(["modprobe", "loop"], check=False, capture_output=True)
    subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        img.unlink(missing_ok=True)
        mnt.rmdir()


def state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def hello_rtt(d: RunningDaemon) -> float:
    start = time.monotonic()
    with Raw(d) as r:
        r.ok("hello", version=1)
    return time.monotonic() - start


def test_a_tool_in_d_state_blocks_nobody(daemon: RunningDaemon) -> None:
    with freezable() as mnt, Client() as c:
        call = c.tool_call(memory="32M", label="stuck").begin()
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)
        proc = call.popen(["sh", "-c", f"echo x > {mnt}/f"])
        wait_until(lambda: state(proc.pid) == "D", what="the tool to block on the frozen fs")
        cg = Cgroup(call.info["cgroup"])
        done: dict[str, Any] = {}
        ender = threading.Thread(target=lambda: done.update(call.end(-9)))
        ender.start()
        # While call.end waits for a tool that cannot die, everyone else is served.
        rtts = []
        while ender.is_alive() or not rtts:
            rtts.append(hello_rtt(daemon))
        ender.join()
        assert max(rtts) < HELLO_BOUND_S, rtts
        assert done["call"] == call.id
        assert cg.exists() and proc.poll() is None  # still stuck: its cgroup waits
        subprocess.run(["fsfreeze", "-u", str(mnt)], check=True)
        wait_until(lambda: not cg.exists(), what="the leftover cgroup to go once it empties")
        proc.wait()


def test_recovery_never_waits_and_grace_starts_when_serving(daemon: RunningDaemon) -> None:
    with freezable() as mnt:

        def agent(chan: Chan) -> None:
            with Client() as c:
                legit = c.tool_call(memory="32M", label="sleep")
                legit_proc = legit.popen(["sleep", "600"])
                stuck = c.tool_call(memory="32M", label="stuck")
                stuck.begin()
                chan.send({"legit": [legit.id, legit.token, legit_proc.pid], "stuck": stuck.id})
                chan.recv()  # the fs is frozen
                stuck_proc = stuck.popen(["sh", "-c", f"echo x > {mnt}/f"])
                chan.send(stuck_proc.pid)
                chan.recv()  # killed before this returns

        owner = Peer(agent)
        ids = owner.recv()
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)
        owner.send("frozen")
        stuck_pid = owner.recv()
        wait_until(lambda: state(stuck_pid) == "D", what="the stuck tool to block")
        stuck_cg = next(p for p in daemon.tool_cgroups() if p.name == ids["stuck"])
        # The daemon dies, then the agent: nobody will claim the stuck call (its record is
        # lost too), and the legitimate one is claimed only 2 s after the socket is up.
        daemon.kill9()
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        (daemon.state_dir / "state.v2" / "calls" / f"{ids['stuck']}.json").unlink()
        daemon.start()  # returns once it listens; recovery must not have waited for the tool
        time.sleep(2)
        call_id, token, legit_pid = ids["legit"]
        with Raw(daemon) as r:
            assert r.ok("call.claim", call=call_id, token=token)["state"] == "running"
            time.sleep(GRACE_S + 1)  # past the grace, counted from the socket
            assert state(legit_pid) in "SR"
            subprocess.run(["fsfreeze", "-u", str(mnt)], check=True)
            wait_until(lambda: not stuck_cg.exists(), what="the unknown call's cgroup to go")
            os.kill(legit_pid, signal.SIGTERM)
            assert r.ok("call.end", call=call_id, token=token, exit_status=-15)["signal"] == 15


def test_a_recycled_pid_is_never_moved() -> None:
    # The peer exits and its pid number goes to another process between the daemon's
    # check and its cgroup.procs write: the pidfd says the peer is gone, nothing moves.
    with scratch("sec-pid") as base:
        target = base.child("call").create()
        for _ in range(50):
            gone = subprocess.Popen(["sleep", "600"])
            pidfd = os.pidfd_open(gone.pid)
            gone.kill()
            gone.wait()
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(gone.pid - 1))
            victim = subprocess.Popen(["sleep", "600"])
            if victim.pid == gone.pid:
                break
            victim.kill()
            victim.wait()
            os.close(pidfd)
        else:
            pytest.fail("could not recycle a pid (too busy a machine?)")
        try:
            peer = KernelPeer(gone.pid, 0, 0, "/", None, pidfd=pidfd)
            with pytest.raises(PeerGone):
                move_pinned(target, peer)
            assert target.procs() == [] and victim.poll() is None
        finally:
            victim.kill()
            victim.wait()
            os.close(pidfd)

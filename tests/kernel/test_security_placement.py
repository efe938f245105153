"""Issue 7, High 1 and the Lows on adoption and crashes: a tool call never leaves the
cgroup (and the limits) its agent runs under, sessions are capped, adoption and close
give every agent process back, and a crash leaves nothing that blocks an owner."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agentcg.client import Client
from agentcg.core.errors import AgentcgError
from agentcg.kernel.cgroup import Cgroup
from tests.kernel.daemon_fixture import RunningDaemon
from tests.kernel.security_helpers import NOBODY, Peer, codes, fake_container, relative, scratch
from tests.kernel.test_robustness import Chan

# These tests stop, kill or restart their daemon: each gets its own.
pytestmark = [pytest.mark.kernel, pytest.mark.fresh_daemon]

MiB = 1 << 20


def test_tool_call_stays_under_its_containers_limits(daemon: RunningDaemon) -> None:
    # Attack: a process in a container limited to 64 MiB asks for a 1 GiB tool call and
    # allocates 200 MiB in it. Before, the call's cgroup was <root>/sessions/..., outside
    # the container, and the allocation succeeded.
    with scratch("sec-place") as base:
        ctr = fake_container(base, 64 * MiB)

        def agent(chan: Chan) -> None:
            out: dict[str, object] = {}
            with Client() as c:
                try:
                    c.open_session("big", memory="1G")
                except AgentcgError as e:
                    out["big"] = e.code
                call = c.tool_call(memory="1G", label="dd")
                done = call.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"])
                out.update(rc=done.returncode, cgroup=call.info["cgroup"], outcome=call.outcome)
                out["self"] = Path("/proc/self/cgroup").read_text().strip()
            chan.send(out)
            chan.recv()  # the daemon restarts: the prepared home is found again
            with Client() as c, c.tool_call(memory="16M", label="true") as again:
                chan.send([again.run(["true"]).returncode, again.info["cgroup"]])

        peer = Peer(agent, cgroup=ctr)
        seen = peer.recv()
        daemon.kill9()
        daemon.start()
        peer.send("restarted")
        rc, cgroup = peer.recv()
        assert peer.wait() == 0
        assert rc == 0 and cgroup.startswith(f"{ctr.path}/agentcg/"), cgroup
        # Asking for more than the container has is refused outright...
        assert seen["big"] == "limit_exceeded"
        # ...the default session nests under the container and is capped below its limit...
        assert seen["cgroup"].startswith(f"{ctr.path}/agentcg/")
        session_cg = Cgroup(Path(seen["cgroup"]).parent.parent)
        assert 0 < session_cg.read_int("memory.max") <= 32 * MiB
        # ...so the 200 MiB allocation dies, as it would have without agentcg.
        assert seen["rc"] == -9, seen
        # The container's own processes moved to a leaf so it can have children.
        assert seen["self"] == f"0::{relative(ctr)}/agentcg-leaf"
        assert ctr.procs() == []


def test_another_uid_cannot_open_an_uncapped_session(daemon: RunningDaemon) -> None:
    # Attack: uid 65534 opened a session with memory.max 1 PiB and pids.max 4194304.
    peer = Peer(
        codes(
            daemon,
            [
                ("session.open", {"name": "huge", "memory": 2**50}),
                ("session.open", {"name": "forky", "pids": 4194304}),
                ("session.open", {"name": "plain"}),
            ],
        ),
        uid=NOBODY,
    )
    huge, forky, plain = peer.recv()
    assert peer.wait() == 0
    assert (huge, forky) == ("limit_exceeded", "limit_exceeded")
    scg = Cgroup(plain["cgroup"])
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < scg.read_int("memory.max") <= host // 2  # capped without asking
    assert 0 < scg.read_int("pids.max") <= 32768


def test_adopt_twice_and_close_give_back_the_agent_and_its_children(
    daemon: RunningDaemon,
) -> None:
    # Before: close moved back only the adopted pid (its children were SIGKILLed), and a
    # second adopt recorded agent/ itself as the origin, so close killed the agent.
    with scratch("sec-adopt") as base:
        home = base.child("home").create()

        def agent(chan: Chan) -> None:
            with Client() as c:
                c.request("session.open", name="adopted", adopt=True)
                child = subprocess.Popen(["sleep", "600"])
                c.request("session.open", name="adopted2")
                c.request("session.open", name="again", adopt=True)  # from inside adopted
                back = c.request("session.open", adopt=True)  # default session, adopt again
                chan.send({"child": child.pid, "default": back["session"]})
                chan.recv()  # the test looks at the cgroups
                for name in ("again", "adopted"):
                    c.request("session.close", session=name)
                chan.send({"me": Path("/proc/self/cgroup").read_text().strip()})
                chan.recv()
            child.kill()

        peer = Peer(agent, cgroup=home)
        first = peer.recv()
        child_cg = Path(f"/proc/{first['child']}/cgroup").read_text().strip()
        assert child_cg.endswith("/agentcg/adopted/agent"), child_cg
        peer.send("closed?")
        after = peer.recv()
        # The agent and the child it started while adopted are alive, back home.
        assert after["me"] == f"0::{relative(home)}/agentcg-leaf"
        child_now = Path(f"/proc/{first['child']}/cgroup").read_text().strip()
        assert child_now == f"0::{relative(home)}/agentcg-leaf"
        peer.send("done")
        assert peer.wait() == 0


def test_crash_before_a_session_record_does_not_block_its_owner(daemon: RunningDaemon) -> None:
    # A daemon killed between creating uid-65534's default session cgroup and writing
    # its record left an ownerless session: user 65534's calls were refused for good.
    daemon.kill9()
    orphan = daemon.root.child("sessions").child(f"uid-{NOBODY}").create()
    orphan.child("tools").create()
    daemon.start()
    peer = Peer(codes(daemon, [("call.begin", {"intent": {"label": "true"}})]), uid=NOBODY)
    (began,) = peer.recv()
    assert peer.wait() == 0
    assert isinstance(began, dict), began
    assert began["session"] == f"uid-{NOBODY}"

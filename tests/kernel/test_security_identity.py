"""Issue 7, High 2 and Medium 6: identity comes from namespaces, not cgroup paths; no set
of identities can exhaust the daemon; protection and favourable priorities are bounded
by config, not chosen by agents."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from agentcg.core.caps import protection_budget
from agentcg.core.config import load_config
from agentcg.daemon.layout import host_memory
from tests.kernel.daemon_fixture import RunningDaemon
from tests.kernel.security_helpers import (
    CLONE_NEWCGROUP,
    CLONE_NEWNS,
    NOBODY,
    Peer,
    codes,
    scratch,
)
from tests.kernel.test_robustness import Raw

pytestmark = pytest.mark.kernel

CID = "5e" * 32


def test_namespaced_root_is_an_agent_and_a_fake_container_is_nobody(
    daemon: RunningDaemon,
) -> None:
    # Root in its own mount and cgroup namespaces (a container runtime agentcg's regex
    # did not know, e.g. Podman or LXC) was an admin before.
    root_in_ns = Peer(
        codes(daemon, [("hello", {"version": 1}), ("list", {})]),
        unshare=CLONE_NEWNS | CLONE_NEWCGROUP,
    )
    hello, listed = root_in_ns.recv()
    assert root_in_ns.wait() == 0
    assert hello["peer"]["uid"] == 0 and hello["peer"]["confined"] is True
    assert listed == "unauthorized"
    # A user with a delegated subtree names a directory like a Docker scope and moves
    # in: it must not become that "container" (a label comes only from root's cgroups).
    with scratch("sec-ident") as base:
        fake = base.child(f"docker-{CID}.scope").create()
        for f in ("", "cgroup.procs", "cgroup.subtree_control"):
            os.chown(fake.path / f, NOBODY, NOBODY)
        user = Peer(
            codes(daemon, [("hello", {"version": 1}), ("session.open", {})]),
            cgroup=fake,
            uid=NOBODY,
        )
        hello, opened = user.recv()
        assert user.wait() == 0
    assert hello["peer"]["container"] is None and hello["peer"]["confined"] is False
    assert not opened["session"].startswith("ctr-"), opened
    # The host's root in its own namespaces stays an admin.
    with Raw(daemon) as r:
        assert r.ok("hello", version=1)["peer"]["confined"] is False
        r.ok("list")


GLOBAL_CAPS = (
    "max_connections = 6\nadmin_connections = 2\nmax_sessions = 3\nmax_calls = 2\n"
    "[grants]\nhigh = { uids = [65534] }"
)


@pytest.mark.parametrize("daemon", [GLOBAL_CAPS], indirect=True, ids=["global_caps"])
def test_no_set_of_identities_exhausts_the_daemon(daemon: RunningDaemon) -> None:
    # Sessions: three uids together reach max_sessions; the fourth is refused, an admin not.
    opened = []
    for uid in (NOBODY, NOBODY - 1, NOBODY - 2, NOBODY - 3):
        peer = Peer(codes(daemon, [("session.open", {"name": f"s{uid}"})]), uid=uid)
        opened.append(peer.recv()[0])
        assert peer.wait() == 0
    assert [isinstance(o, dict) for o in opened] == [True, True, True, False]
    assert opened[3] == "limit_exceeded"
    with Raw(daemon) as admin:
        admin.ok("session.open", name="admins")
        # Calls: two in all, whoever begins them (the admin's stays open meanwhile).
        admin.ok("call.begin", session="admins", intent={"label": "a"})
        calls = Peer(
            codes(
                daemon,
                [
                    ("call.begin", {"session": f"s{NOBODY}", "intent": {"label": "b"}}),
                    ("call.begin", {"session": f"s{NOBODY}", "intent": {"label": "c"}}),
                ],
            ),
            uid=NOBODY,
        )
        began, refused = calls.recv()
        assert calls.wait() == 0
    assert isinstance(began, dict) and refused == "limit_exceeded"
    # Connections: agents get max_connections - admin_connections; admins the rest.

    def hold(chan) -> None:  # type: ignore[no-untyped-def]
        conns = [Raw(daemon) for _ in range(5)]
        replies = []
        for r in conns:
            with contextlib.suppress(OSError):  # a refused one may be closed already
                r.send(b'{"v":1,"id":1,"op":"hello","args":{"version":1}}\n')
            reply = r.frame()
            replies.append("ok" if reply and reply["ok"] else reply and reply["error"]["code"])
        chan.send(replies)
        chan.recv()

    holder = Peer(hold, uid=NOBODY)
    held = holder.recv()
    assert held == ["ok"] * 4 + ["busy"], held
    with Raw(daemon) as admin:
        assert admin.ok("hello", version=1)
    holder.send("bye")
    assert holder.wait() == 0


@pytest.mark.parametrize("daemon", ["[grants]\nhigh = { uids = [65534] }"], indirect=True)
def test_priorities_are_granted_and_protection_is_bounded(daemon: RunningDaemon) -> None:
    prio = Peer(
        codes(
            daemon,
            [
                ("call.begin", {"intent": {"priority": "high", "memory": "64M"}}),
                ("call.begin", {"intent": {"priority": "critical", "memory": "64M"}}),
            ],
        ),
        uid=NOBODY,
    )
    high, critical = prio.recv()
    assert prio.wait() == 0
    assert isinstance(high, dict) and critical == "unauthorized"
    other = Peer(codes(daemon, [("call.begin", {"intent": {"priority": "high"}})]), uid=NOBODY - 1)
    assert other.recv() == ["unauthorized"]
    assert other.wait() == 0
    # memory.low of the whole tree is a budget, not "max": however much critical calls
    # claim, the kernel protects at most protection_fraction of the host.
    cfg = load_config(daemon.config)
    budget = protection_budget(cfg, host_memory(), None)
    assert daemon.root.read_int("memory.low") == budget // 4096 * 4096
    assert 0 < budget < host_memory()


def test_fd_budget_is_checked_before_anything_starts(tmp_path: Path) -> None:
    d = RunningDaemon(tmp_path, "max_connections = 100000")

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    try:
        refused = subprocess.run(
            [sys.executable, "-m", "agentcg.cli.main", "daemon", "--config", str(d.config)],
            capture_output=True,
            text=True,
            timeout=900,
            preexec_fn=low_fd_limit,
        )
        assert refused.returncode != 0
        assert "needs 200064 file descriptors but the limit is 1024" in refused.stderr
        assert not d.root.exists()
    finally:
        d.cleanup()

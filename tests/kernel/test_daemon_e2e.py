"""End to end over the socket: real daemon, real processes, real cgroups."""

from __future__ import annotations

import sys

import pytest

from agentcg.client import Client
from tests.kernel.daemon_fixture import RunningDaemon

pytestmark = pytest.mark.kernel

ALLOC = "import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b'x' * len(b[::4096])"


def test_call_that_fits(daemon: RunningDaemon) -> None:
    with Client() as c:
        with c.tool_call(memory="256M", priority="high", label="pytest") as call:
            proc = call.run([sys.executable, "-c", ALLOC, "32"])
            cgroup = call.info["cgroup"]
        assert cgroup.endswith(f"/tools/{call.id}")
        assert proc.returncode == 0
        out = call.outcome
        assert out is not None
        assert out["exit_status"] == 0 and out["killed_reason"] is None
        assert out["peak_memory"] >= 32 << 20
        assert out["advice"] is None
        assert call.info["limits"]["memory_high"] == 256 << 20
    assert daemon.tool_cgroups() == []


def test_call_runs_inside_its_cgroup(daemon: RunningDaemon) -> None:
    with Client() as c, c.tool_call(memory="64M", label="cat") as call:
        import subprocess

        proc = call.run(["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.strip().endswith(f"/tools/{call.id}")


def test_oom_outcome_with_advice_and_session_survives(daemon: RunningDaemon) -> None:
    with Client() as c:
        with c.tool_call(memory="48M", label="pytest") as call:
            proc = call.run([sys.executable, "-c", ALLOC, "256"])
        assert proc.returncode == -9
        out = call.outcome
        assert out is not None
        assert out["killed_reason"] == "oom" and out["oom_kills"] >= 1
        assert "narrower test selection" in out["advice"]
        assert any(e["event"] == "oom" for e in call.events)
        # The agent and its session carry on.
        with c.tool_call(memory="64M", label="echo") as again:
            assert again.run(["true"]).returncode == 0
        assert again.outcome and again.outcome["exit_status"] == 0

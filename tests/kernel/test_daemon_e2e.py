"""End to end over the socket: real daemon, real processes, real cgroups."""

from __future__ import annotations

import json
import subprocess
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
        proc = call.run(["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.strip().endswith(f"/tools/{call.id}")


def test_oom_outcome_with_advice_and_session_survives(daemon: RunningDaemon) -> None:
    with Client() as c:
        with c.tool_call(memory="48M", label="pytest") as call:
            proc = call.run([sys.executable, "-c", ALLOC, "256"])
        assert proc.returncode == -9
        out = call.outcome
        assert out is not None
        assert out["killed_reason"] == "oom"
        assert "narrower test selection" in out["advice"]
        # The kernel's OOM killer, or the daemon's kill of a call stuck at its ceiling
        # when that came first (both are reported as "oom").
        killed_at_ceiling = any(
            e["event"] == "killed" and e["data"]["reason"] == "oom" for e in call.events
        )
        kernel_oom = out["oom_kills"] >= 1 and any(e["event"] == "oom" for e in call.events)
        assert kernel_oom or killed_at_ceiling, (out, call.events)
        # The agent and its session carry on.
        with c.tool_call(memory="64M", label="echo") as again:
            assert again.run(["true"]).returncode == 0
        assert again.outcome and again.outcome["exit_status"] == 0


def test_timeout_kills_the_call_with_advice(daemon: RunningDaemon) -> None:
    with Client() as c, c.tool_call(memory="32M", timeout=1, label="make") as call:
        proc = call.run(["sleep", "60"])
    out = call.outcome
    assert out is not None
    assert proc.returncode == -9
    assert out["killed_reason"] == "timeout"
    assert "--timeout 2" in out["advice"]
    assert any(e["event"] == "killed" and e["data"]["reason"] == "timeout" for e in call.events)
    assert daemon.tool_cgroups() == []


def test_agentcg_run_cli_exit_status_and_advice(daemon: RunningDaemon) -> None:
    cli = [sys.executable, "-m", "agentcg.cli.main", "run"]
    ok = subprocess.run(
        [*cli, "--memory", "64M", "--label", "sh", "--", "sh", "-c", "exit 3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 3, ok.stderr
    oom = subprocess.run(
        [*cli, "-m", "48M", "-l", "pytest", "--", sys.executable, "-c", ALLOC, "256"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert oom.returncode == 128 + 9
    assert "OOM-killed" in oom.stderr and "--memory" in oom.stderr
    assert daemon.tool_cgroups() == []


ESCAPE = """
import json, sys
from agentcg.client import Client
from agentcg.core.errors import AgentcgError
c = Client()
codes = {"hello_call": c.server.get("call")}
for op, args in [("session.open", {"adopt": True}), ("session.open", {"name": "elsewhere"}),
                 ("session.close", {"session": sys.argv[1]}),
                 ("call.begin", {"intent": {"memory": "1G"}})]:
    try:
        c.request(op, **args)
        codes[op + json.dumps(args)] = "ok"
    except AgentcgError as e:
        codes[op + json.dumps(args)] = e.code
print(json.dumps(codes))
"""


def test_a_tool_cannot_escape_its_call(daemon: RunningDaemon) -> None:
    with Client() as c:
        session = c.open_session("escape")
        with c.tool_call(session=session, memory="64M", label="py") as call:
            proc = call.run(
                [sys.executable, "-c", ESCAPE, session], stdout=subprocess.PIPE, text=True
            )
        codes = json.loads(proc.stdout)
        assert codes.pop("hello_call") == call.id
        assert set(codes.values()) <= {"unauthorized", "conflict"}, codes
        # Nested `agentcg run` inside a call runs the command in that same call.
        with c.tool_call(session=session, memory="64M", label="sh") as outer:
            nested = outer.run(
                [sys.executable, "-m", "agentcg.cli.main", "run", "--", "cat", "/proc/self/cgroup"],
                stdout=subprocess.PIPE,
                text=True,
            )
        assert nested.returncode == 0
        assert nested.stdout.strip().endswith(f"/tools/{outer.id}")
        assert c.request("session.status", session=session)["session"] == session


ADOPTED_AGENT = """
import json
from pathlib import Path
from agentcg.client import Client
me = lambda: Path("/proc/self/cgroup").read_text().strip()[3:]
before = me()
c = Client()
session = c.request("session.open", name="adopted", adopt=True)["session"]
inside = me()
bound = Client().server.get("session")
with c.tool_call(memory="32M", label="true") as call:  # no session named: the bound one
    call.run(["true"])
closed = c.close_session(session)
print(json.dumps({"before": before, "inside": inside, "bound": bound,
                  "call_session": call.info["session"], "after": me()}))
"""


def test_adopted_agent_lives_in_its_session_and_is_given_back(daemon: RunningDaemon) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", ADOPTED_AGENT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["inside"].endswith("/sessions/adopted/agent")
    assert seen["bound"] == "adopted" and seen["call_session"] == "adopted"
    assert seen["after"] == seen["before"]
    assert not (daemon.root.path / "sessions/adopted").exists()


def test_demo_agent_runs_through(daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    """The scripted agent that `scripts/run` shows: every step, the OOM and the retry."""
    from agentcg.devtools.demo import run_demo

    assert run_demo(session="demo-e2e") == 0
    out = capsys.readouterr().out
    assert "killed (oom)" in out and "retry asking" in out, out
    assert "the agent process was never touched" in out, out

"""`agentcg top` and `agentcg status` as an ordinary agent would use them: no root, its
own sessions only, top in a real terminal (tmux) that it quits with q."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agentcg.client import Client
from tests.kernel.daemon_fixture import RunningDaemon
from tests.kernel.other_uid import ForOthers

pytestmark = pytest.mark.kernel

AGENT_UID = 4242
WAIT_S = 120.0

# An agent that opens its session and keeps one tool call running until stdin closes.
AGENT = """
import sys
from agentcg.client import Client
c = Client()
c.open_session("agents-task")
call = c.tool_call(session="agents-task", memory="32M", label="sleeper").begin()
tool = call.popen(["sleep", "600"])
print("ready", flush=True)
sys.stdin.read()
tool.kill()
call.end(tool.wait())
"""


def as_agent(daemon: RunningDaemon, others: ForOthers, *argv: str) -> str:
    done = subprocess.run(
        [others.python, "-m", "agentcg.cli.main", *argv],
        **others.as_uid(AGENT_UID, daemon.socket),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class Tmux:
    def __init__(self, sock: Path) -> None:
        self.base = ["tmux", "-S", str(sock)]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def wait_screen(self, *wanted: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while True:
            screen = self.screen()
            if all(w in screen for w in wanted):
                return screen
            assert time.monotonic() < deadline, f"never saw {wanted} on:\n{screen}"
            time.sleep(0.5)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_agent_sees_its_own_session_in_status_and_top(
    daemon: RunningDaemon, tmp_path: Path, for_others: ForOthers
) -> None:
    others = for_others
    with Client() as c:
        c.open_session("roots-task")  # not the agent's to see
        agent = subprocess.Popen(
            [others.python, "-c", AGENT],
            **others.as_uid(AGENT_UID, daemon.socket),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert agent.stdout is not None and agent.stdin is not None
        try:
            assert agent.stdout.readline().strip() == "ready"

            text = as_agent(daemon, others, "status")
            assert text.startswith("your sessions: 1, tool calls running: 1")
            assert "agents-task" in text and "sleeper" in text and "roots-task" not in text
            snap = json.loads(as_agent(daemon, others, "status", "--json"))
            assert snap["scope"] == "own" and "daemon" not in snap
            assert [s["session"] for s in snap["sessions"]] == ["agents-task"]

            env = " ".join(f"{k}={v}" for k, v in others.env(daemon.socket).items())
            top = (
                f"setpriv --reuid={AGENT_UID} --regid={AGENT_UID} --clear-groups "
                f"env {env} {others.python} -m agentcg.cli.main top --interval 0.5"
            )
            tmux = Tmux(tmp_path / "tmux.sock")
            # After top, the shell says how it ended and keeps the pane for us to read.
            shell = f'{top}; echo "top exited with $?"; sleep 600'
            tmux("new-session", "-d", "-s", "top", "-x", "132", "-y", "40", shell)
            try:
                screen = tmux.wait_screen("agents-task", "sleeper", "running", "q quits")
                assert "roots-task" not in screen
                assert "your sessions: 1, tool calls running: 1" in screen
                # The CPU% column fills in from the second read on.
                tmux.wait_screen("SESSION / CALL", "last actions")
                tmux("send-keys", "-t", "top", "q")
                tmux.wait_screen("top exited with 0")
            finally:
                subprocess.run([*tmux.base, "kill-server"], capture_output=True)
        finally:
            agent.stdin.close()
            assert agent.wait(WAIT_S) == 0

"""Issue 7, Low: `agentcg run` behaves like the command it wraps: 127 for a command that
does not exist, the tool's 137 when the daemon ends the call (session closed), and
SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to the wrapper reach the tool."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agentcg.client import Client
from agentcg.kernel.cgroup import Cgroup
from tests.kernel.daemon_fixture import RunningDaemon
from tests.kernel.test_robustness import wait_until

pytestmark = pytest.mark.kernel

RUN = [sys.executable, "-m", "agentcg.cli.main", "run"]
TIMEOUT_S = 900  # the CLI's imports alone are slow on a loaded VM


def test_missing_command_exits_127(daemon: RunningDaemon) -> None:
    done = subprocess.run(
        [*RUN, "--", "/nonexistent/tool"], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 127, done.stderr
    assert "No such file or directory" in done.stderr


def test_signals_reach_the_tool_and_a_closed_session_gives_137(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    with Client() as c:
        c.open_session("wrapped")
    # The tool reports each signal it gets; the wrapper alone is signalled (no process
    # group, no terminal): before, SIGINT was swallowed and SIGTERM killed the wrapper.
    log = tmp_path / "signals"
    script = (
        f'for s in INT HUP QUIT; do trap "echo $s >> {log}" $s; done; '
        f'trap "echo TERM >> {log}; exit 42" TERM; '
        f"echo ready >> {log}; "
        "while :; do sleep 0.1; done"
    )
    wrapper = subprocess.Popen(
        [*RUN, "--session", "wrapped", "--", "sh", "-c", script], start_new_session=True
    )
    wait_until(lambda: log.exists(), timeout=TIMEOUT_S, what="the tool to set its traps")
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        wrapper.send_signal(sig)
        name = sig.name.removeprefix("SIG")
        wait_until(lambda n=name: log.exists() and n in log.read_text(), what=f"{name} forwarded")
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(TIMEOUT_S) == 42  # the tool's own status
    assert log.read_text().split() == ["ready", "INT", "HUP", "QUIT", "TERM"]

    # Ended by the daemon (its session closed): the tool's 137, not the wrapper's 1.
    sleeper = subprocess.Popen(
        [*RUN, "--session", "wrapped", "--", "sleep", "600"],
        stderr=subprocess.PIPE,
        text=True,
    )
    # Placed in its leaf, not only begun: a session closed between call.begin and
    # call.attach ends the call before the tool runs (126, nothing to kill).
    wait_until(
        lambda: any(Cgroup(p).procs() for p in daemon.tool_cgroups()),
        timeout=TIMEOUT_S,
        what="sleep to run in its call's cgroup",
    )
    with Client() as c:
        c.close_session("wrapped")
    _, err = sleeper.communicate(timeout=TIMEOUT_S)
    assert sleeper.returncode == 137, err
    assert "the daemon ended this tool call" in err

"""`agentcg run` against the fake daemon: it behaves like the command it wraps (status,
signals, stdio and inherited descriptors, errors) and asks the daemon what it should."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.host.fake_daemon import FakeDaemon

ROOT = str(Path(__file__).resolve().parents[2])
RUN = [sys.executable, "-m", "agentcg", "run"]


def env(sock_path: Path) -> dict[str, str]:
    return dict(os.environ, AGENTCG_SOCKET=str(sock_path), PYTHONPATH=ROOT)


def run(sock_path: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUN, *args],
        env=env(sock_path),
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def test_the_tools_status_stdin_and_stdout(daemon: FakeDaemon, sock_path: Path):
    done = run(sock_path, "-l", "cat", "--", "sh", "-c", "echo $$; cat; exit 3", input="hi\n")
    assert (done.returncode, done.stderr) == (3, "")
    pid, echoed = done.stdout.splitlines()
    assert echoed == "hi"
    assert daemon.attach_pids == [int(pid)]  # the tool itself was placed, before its exec
    [begin] = daemon.ops("call.begin")
    assert begin["args"]["intent"] == {"label": "cat"}
    [end] = daemon.ops("call.end")
    assert end["args"]["exit_status"] == 3


def test_a_signal_that_ends_the_tool_is_128_plus_n(daemon: FakeDaemon, sock_path: Path):
    done = run(sock_path, "--", "sh", "-c", "kill -TERM $$")
    assert done.returncode == 128 + signal.SIGTERM
    [end] = daemon.ops("call.end")
    assert end["args"]["exit_status"] == -signal.SIGTERM


@pytest.mark.parametrize(
    ("command", "status", "reason"),
    [
        ("/nonexistent/tool", 127, "No such file or directory"),
        ("no-such-tool-on-path", 127, "No such file or directory"),
        ("{tmp}/not-executable", 126, "Permission denied"),
    ],
)
def test_a_command_that_cannot_run(
    daemon: FakeDaemon, sock_path: Path, tmp_path: Path, command: str, status: int, reason: str
):
    (tmp_path / "not-executable").write_text("#!/bin/sh\necho ran\n")
    command = command.format(tmp=tmp_path)
    done = run(sock_path, "--", command, "arg")
    assert (done.returncode, done.stdout) == (status, "")
    assert done.stderr == f"agentcg: {command}: {reason}\n"
    [end] = daemon.ops("call.end")
    assert end["args"]["exit_status"] == status


def test_a_refused_attach_runs_nothing_and_exits_126(daemon: FakeDaemon, sock_path: Path):
    daemon.attach_ok = False
    done = run(sock_path, "--", "echo", "ran")
    assert (done.returncode, done.stdout) == (126, "")
    assert "could not place the tool in its cgroup" in done.stderr
    assert "not a descendant" in done.stderr
    [end] = daemon.ops("call.end")
    assert end["args"]["exit_status"] == 126


def test_inherited_descriptors_reach_the_tool(daemon: FakeDaemon, sock_path: Path):
    # As `cmd <(...)` gives them: a pipe the wrapper inherited, named by /dev/fd/N.
    r, w = os.pipe()
    os.write(w, b"through an inherited pipe\n")
    os.close(w)
    try:
        done = run(sock_path, "--", "cat", f"/dev/fd/{r}", pass_fds=(r,))
    finally:
        os.close(r)
    assert (done.returncode, done.stdout, done.stderr) == (0, "through an inherited pipe\n", "")


def test_the_tool_gets_sigpipe_back(daemon: FakeDaemon, sock_path: Path):
    # The interpreter ignores SIGPIPE; `yes | head -1` must end `yes` by the signal.
    wrapper = subprocess.Popen(
        [*RUN, "--", "yes"], env=env(sock_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert wrapper.stdout is not None and wrapper.stderr is not None
    assert wrapper.stdout.readline() == b"y\n"
    wrapper.stdout.close()
    assert wrapper.wait(60) == 128 + signal.SIGPIPE
    assert wrapper.stderr.read() == b""
    wrapper.stderr.close()


def test_signals_to_the_wrapper_reach_the_tool(daemon: FakeDaemon, sock_path: Path):
    script = (
        'trap "echo INT" INT; trap "echo TERM; exit 42" TERM; echo ready; '
        "while :; do sleep 0.05; done"
    )
    wrapper = subprocess.Popen(
        [*RUN, "--", "sh", "-c", script],
        env=env(sock_path),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # signals from us only, not from a terminal's group
    )
    assert wrapper.stdout is not None
    assert wrapper.stdout.readline() == "ready\n"
    wrapper.send_signal(signal.SIGINT)
    assert wrapper.stdout.readline() == "INT\n"
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(60) == 42
    assert wrapper.stdout.read() == "TERM\n"
    wrapper.stdout.close()


def test_a_waiting_begin_says_so_once_and_json_gives_the_outcome(
    daemon: FakeDaemon, sock_path: Path
):
    message = "session 's' already runs 1 tool calls (its max_calls); waiting"
    daemon.full_session = message
    done = run(sock_path, "--wait", "5", "--json", "--", "true")
    assert (done.returncode, done.stdout) == (0, "")
    waiting, outcome = done.stderr.splitlines()
    assert waiting == f"agentcg: {message}"
    assert json.loads(outcome)["exit_status"] == 0
    # First with its child's pid and no wait (refused: full), then waiting its turn.
    first, second = daemon.ops("call.begin")
    assert "wait_s" not in first["args"] and first["args"]["pid"] > 0
    assert second["args"]["wait_s"] == 5.0 and "pid" not in second["args"]
    assert [m["op"] for m in daemon.ops("call.attach")] == ["call.attach"]


def test_a_full_session_without_wait_fails_at_once_running_nothing(
    daemon: FakeDaemon, sock_path: Path, tmp_path: Path
):
    daemon.full_session = "never shown"
    ran = tmp_path / "ran"
    done = run(sock_path, "--wait", "0", "--", "touch", str(ran))
    assert done.returncode == 1 and not ran.exists()
    assert done.stderr.strip() == "Error: session 's' is full"
    assert len(daemon.ops("call.begin")) == 1 and not daemon.ops("call.attach")


def test_no_daemon_is_one_line_and_status_1(sock_path: Path):
    done = run(sock_path, "--", "true")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"Error: cannot reach the agentcg daemon at {sock_path} (")

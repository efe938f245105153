"""The daemon with agentcg's sched_ext scheduler: tool calls (and only they) run on it,
their outcome carries its statistics, and when it stops the daemon falls back, keeps
serving and loads it again; a daemon crash leaves it running."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentcg.bpf import sched as scx
from agentcg.client import Client
from agentcg.kernel.cgroup import Cgroup
from tests.kernel.daemon_fixture import RunningDaemon

# These tests stop, kill or restart their daemon: each gets its own.
pytestmark = [pytest.mark.fresh_daemon, pytest.mark.kernel, pytest.mark.requires("sched_ext")]

SCHED = "[sched]\nenabled = true\nreload_backoff_s = 0.5"
# Burns a second of CPU, then exits with its scheduling policy (SCHED_EXT is 7).
BUSY_POLICY = (
    "import os, sys, time\nt = time.time()\nwhile time.time() - t < 1: pass\n"
    "sys.exit(os.sched_getscheduler(0))"
)
HOG = "while True: pass"


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def sched_ext_stats(c: Client) -> dict[str, object]:
    return c.request("stats")["daemon"]["sched_ext"]


def cpu_used_us(path: str) -> int:
    return Cgroup(Path(path)).cpu_stat().get("usage_usec", 0)


@pytest.mark.parametrize("daemon", [SCHED], indirect=True)
def test_tool_calls_run_on_the_scheduler(daemon: RunningDaemon) -> None:
    wait_for(lambda: scx.kernel_state().ours, 120, "the daemon to load the scheduler")
    c = Client()
    assert sched_ext_stats(c)["ops"] == "agentcg"
    call = c.tool_call(priority="high", latency_sensitive=True, label="busy")
    assert call.run([sys.executable, "-c", BUSY_POLICY]).returncode == scx.SCHED_EXT
    stats = call.outcome["sched"] if call.outcome else None
    assert stats is not None and stats["run_us"] > 100_000 and stats["dispatches"] > 0, stats
    # Nothing else is on SCHED_EXT: not this agent, not the daemon.
    assert scx.policy_of(0) == 0
    assert daemon.proc is not None and scx.policy_of(daemon.proc.pid) == 0
    # A call capped in cores stays on the fair class, which enforces cpu.max.
    capped = c.tool_call(cpu=0.5, label="capped")
    assert capped.run([sys.executable, "-c", BUSY_POLICY]).returncode == 0
    assert capped.outcome is not None and capped.outcome["sched"] is None
    # The metrics count the scheduler's waits of the first call only.
    tools = c.request("stats")["tools"]
    waits = [sum(h["sched_max_wait_seconds"]["counts"]) for h in tools.values()]
    calls = [sum(h["duration_seconds"]["counts"]) for h in tools.values()]
    assert sum(waits) == 1 and sum(calls) == 2, tools


@pytest.mark.parametrize("daemon", [SCHED], indirect=True)
def test_scheduler_error_falls_back_and_reloads(daemon: RunningDaemon) -> None:
    wait_for(lambda: scx.kernel_state().ours, 120, "the daemon to load the scheduler")
    c = Client()
    hog = c.tool_call(label="hog")
    proc = hog.popen([sys.executable, "-c", HOG])
    try:
        assert scx.policy_of(proc.pid) == scx.SCHED_EXT
        # Settings the scheduler rejects, written behind the daemon's back.
        scx.Scheduler().write_raw_settings(os.stat(hog.info["cgroup"]).st_ino, 9, 0)
        wait_for(lambda: "stopped after" in daemon.log_tail(20000), 60, "the fallback")
        assert "scheduler error" in daemon.log_tail(20000)
        # The hog goes on running (on the fair class), and the daemon goes on serving.
        used = cpu_used_us(hog.info["cgroup"])
        time.sleep(1)
        assert cpu_used_us(hog.info["cgroup"]) > used
        assert c.tool_call(label="true").run(["true"]).returncode == 0
        # Reloaded after the backoff, with the hog's settings rewritten first.
        wait_for(lambda: sched_ext_stats(c)["counters"]["loads"] >= 2, 120, "the reload")
        assert scx.kernel_state().ours
        time.sleep(2)
        assert scx.kernel_state().ours, "the reloaded scheduler stopped again"
    finally:
        proc.kill()
        proc.wait()
    outcome = hog.end(proc.returncode)
    assert outcome["sched"] is not None and outcome["sched"]["run_us"] > 0, outcome


@pytest.mark.parametrize("daemon", [SCHED], indirect=True)
def test_daemon_crash_leaves_the_scheduler_running(daemon: RunningDaemon) -> None:
    wait_for(lambda: scx.kernel_state().ours, 120, "the daemon to load the scheduler")
    hog = Client().tool_call(label="hog")
    proc = hog.popen([sys.executable, "-c", HOG])
    try:
        daemon.kill9()
        # Pinned, the scheduler outlives the daemon; the hog keeps running under it.
        assert scx.kernel_state().ours
        used = cpu_used_us(hog.info["cgroup"])
        time.sleep(1)
        assert cpu_used_us(hog.info["cgroup"]) > used
        assert scx.policy_of(proc.pid) == scx.SCHED_EXT
        # The new daemon takes the call back and replaces the scheduler with a fresh one.
        daemon.start()
        c = Client()
        assert c.request("call.claim", call=hog.id, token=hog.token)["call"] == hog.id
        wait_for(lambda: sched_ext_stats(c)["counters"]["loads"] >= 1, 120, "the new load")
        assert scx.kernel_state().ours and scx.policy_of(proc.pid) == scx.SCHED_EXT
    finally:
        proc.kill()
        proc.wait()
    c.request("call.end", call=hog.id, token=hog.token, exit_status=-9)
    daemon.stop()
    wait_for(lambda: not scx.kernel_state().ours, 60, "the stopping daemon to unload it")


@pytest.mark.parametrize("daemon", [SCHED], indirect=True)
def test_a_second_daemon_leaves_the_scheduler_to_the_first(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    wait_for(lambda: scx.kernel_state().ours, 120, "the first daemon to load the scheduler")
    first = Client()
    # Another daemon on the host (a benchmark's, a test's) used to replace the first's
    # scheduler, which then replaced it back, and so on.
    second = RunningDaemon(tmp_path, SCHED + "\nreload_backoff_max_s = 2")
    second.start()
    os.environ["AGENTCG_SOCKET"] = str(daemon.socket)
    try:
        c2 = Client(str(second.socket))
        wait_for(
            lambda: "runs the sched_ext scheduler" in str(sched_ext_stats(c2)["agentcg"]),
            120,
            "the second daemon to fall back",
        )
        assert str(sched_ext_stats(c2)["agentcg"]).startswith("fallback")
        # Its calls run on the fair class; the first's scheduler stays as it was.
        call = c2.tool_call(priority="high", latency_sensitive=True, label="busy")
        assert call.run([sys.executable, "-c", BUSY_POLICY]).returncode == 0
        assert sched_ext_stats(first)["counters"]["loads"] == 1
        assert scx.kernel_state().ours
        # The first stops: the second takes the scheduler over.
        first.close()
        daemon.stop()
        wait_for(lambda: sched_ext_stats(c2)["counters"]["loads"] >= 1, 120, "the takeover")
        assert scx.kernel_state().ours
        c2.close()
    finally:
        second.cleanup()
    wait_for(lambda: not scx.kernel_state().ours, 60, "the second daemon to unload it")

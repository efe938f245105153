"""Daemon crash recovery and concurrency, on the real kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agentcg.client import Client
from agentcg.kernel.cgroup import Cgroup
from tests.kernel.daemon_fixture import RunningDaemon

# These tests stop, kill or restart their daemon: each gets its own.
pytestmark = [pytest.mark.kernel, pytest.mark.fresh_daemon]


def wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


ORPHAN = """
import os, sys, time
from agentcg.client import Client
c = Client()
call = c.tool_call(session="orphans", memory="64M", label="sleep")
proc = call.popen(["sleep", "120"])
print(call.id, flush=True)
time.sleep(600)
"""


def test_kill9_restart_recovers_sessions_and_calls(daemon: RunningDaemon) -> None:
    c = Client()
    c.open_session("work", memory="512M")
    c.open_session("orphans")
    # An ask not in whole pages: memory.high reads back rounded down.
    running = c.tool_call(session="work", memory=(128 << 20) + 1000, label="sleep")
    proc = running.popen(["sleep", "120"])
    finished = c.tool_call(session="work", memory="64M", label="true")
    finished.popen(["true"]).wait()  # exits, but its call is never ended
    orphan_owner = subprocess.Popen(
        [sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True
    )
    assert orphan_owner.stdout is not None
    orphan_id = orphan_owner.stdout.readline().strip()
    calls_dir = daemon.root.path / "sessions"
    orphan_cg = Cgroup(calls_dir / "orphans/tools" / orphan_id)
    assert orphan_cg.populated

    daemon.kill9()
    # While the daemon is down, the orphan's agent dies too: nobody will reclaim it.
    orphan_owner.kill()
    orphan_owner.wait()
    assert proc.poll() is None, "tool calls keep running while the daemon is down"
    daemon.start()

    # Our client reconnects and claims its running call; the session kept its budget.
    wait_for(
        lambda: not (calls_dir / "work/tools" / finished.id).exists(),
        30,
        "the finished call's cgroup to be removed on restart",
    )
    status = c.request("session.status", session="work")
    assert status["memory"] == 512 << 20
    assert [x["call"] for x in status["calls"]] == [running.id]
    assert Cgroup(calls_dir / "work/tools" / running.id).procs() == [proc.pid]

    # The unclaimed orphan is killed after reclaim_grace_s (5 s in the fixture).
    wait_for(lambda: not orphan_cg.exists(), 60, "the orphaned call to be killed and removed")

    # The recovered daemon serves new work in the recovered session; deciding the
    # session again takes the recovered call's rounded memory.high for its own ask,
    # not for a tripwire to release.
    with c.tool_call(session="work", memory="64M", label="echo") as again:
        assert again.run(["true"]).returncode == 0
    assert f"call {running.id} (sleep, normal): set_high" not in daemon.log_tail(1_000_000)
    proc.terminate()
    proc.wait()
    outcome = running.end(proc.returncode)
    assert outcome["signal"] == 15 and outcome["killed_reason"] is None
    assert "released" not in [e["event"] for e in running.events]
    assert daemon.tool_cgroups() == []
    c.close()


def test_200_concurrent_calls_across_20_sessions(daemon: RunningDaemon) -> None:
    sessions, per_session = 20, 10
    total = sessions * per_session
    with Client() as admin:
        for i in range(sessions):
            admin.open_session(f"s{i:02d}")
        started = threading.Barrier(total + 1, timeout=600)
        release = threading.Event()
        outcomes: list[dict] = []
        errors: list[BaseException] = []
        cgroups: dict[str, str] = {}

        def agent(i: int) -> None:
            try:
                with Client() as c:
                    call = c.tool_call(session=f"s{i % sessions:02d}", memory="32M", label="sleep")
                    proc = call.popen(["sleep", "600"])
                    cgroups[call.id] = Path(f"/proc/{proc.pid}/cgroup").read_text()
                    started.wait()
                    release.wait(600)
                    proc.terminate()
                    proc.wait()
                    outcomes.append(call.end(proc.returncode))
            except BaseException as e:
                errors.append(e)
                started.abort()

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(total)]
        for t in threads:
            t.start()
        started.wait()
        listing = admin.request("list")
        running = [call for s in listing["sessions"] for call in s["calls"]]
        assert len(running) == total
        assert {call["state"] for call in running} == {"running"}
        assert len(daemon.tool_cgroups()) == total
        for call_id, text in cgroups.items():
            assert text.strip().endswith(f"/tools/{call_id}")
        release.set()
        for t in threads:
            t.join(600)
    assert errors == []
    assert len(outcomes) == total
    assert all(o["signal"] == 15 for o in outcomes)
    assert daemon.tool_cgroups() == []


def test_delegated_root_as_under_systemd(tmp_path: Path) -> None:
    """--delegated owns the cgroup it was started in, as with systemd's Delegate=yes and
    DelegateSubgroup=supervisor: sessions are created beside the daemon's leaf."""
    d = RunningDaemon(tmp_path)
    unit = Cgroup(d.root.path.parent / f"{d.root.name}-unit.service")
    d.config.write_text(d.config.read_text().replace(str(d.root.path), "/unused"))
    d.root = unit
    Cgroup(unit.path.parent).enable_controllers(["memory", "cpu", "pids"])
    unit.create()
    unit.enable_controllers(["memory", "cpu", "pids"])
    supervisor = unit.child("supervisor").create()
    try:
        d.start("--delegated", preexec=lambda: supervisor.write("cgroup.procs", os.getpid()))
        assert d.proc is not None and d.proc.pid in supervisor.procs()
        with Client() as c, c.tool_call(memory="64M", label="true") as call:
            assert call.run(["true"]).returncode == 0
            assert call.info["cgroup"].startswith(f"{unit.path}/sessions/")
        assert not Path("/unused").exists()
    finally:
        d.cleanup()

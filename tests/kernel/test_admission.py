"""A full session makes call.begin wait its turn (bounded), instead of failing at once."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from agentcg.client import Client
from agentcg.core.errors import AgentcgError
from tests.kernel.daemon_fixture import RunningDaemon

pytestmark = pytest.mark.kernel

MAX_CALLS = 8
WAIT_S = 3600  # 200 calls through 8 slots take minutes under TCG


@pytest.mark.parametrize("daemon", [f"[session]\nmax_wait_s = {WAIT_S}"], indirect=True)
def test_200_concurrent_calls_wait_their_turn(daemon: RunningDaemon) -> None:
    total = 200
    with Client() as owner:
        owner.open_session("busy", max_calls=MAX_CALLS)
        exits: list[int] = []
        waiting: list[dict[str, Any]] = []
        errors: list[BaseException] = []
        most = 0
        done = threading.Event()

        def watch() -> None:  # the daemon's books: never more calls than slots
            nonlocal most
            with Client() as seer:
                while not done.is_set():
                    calls = seer.request("session.status", session="busy")["calls"]
                    most = max(most, len(calls))
                    time.sleep(0.1)

        def agent() -> None:
            try:
                with Client(on_event=lambda m: m["event"] == "waiting" and waiting.append(m)) as c:
                    proc = c.tool_call(session="busy", wait_s=WAIT_S, label="true").run(["true"])
                    exits.append(proc.returncode)
            except BaseException as e:
                errors.append(e)

        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=agent) for _ in range(total)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        done.set()
        watcher.join()
    assert errors == []
    assert exits == [0] * total
    assert 1 <= most <= MAX_CALLS
    # Those that waited were told so, once each, with their place in line.
    assert waiting, "with 200 agents and 8 slots somebody must have waited"
    assert len(waiting) <= total - MAX_CALLS
    for w in waiting:
        assert w["call"] is None and w["data"]["session"] == "busy"
        assert w["data"]["position"] >= 1 and w["data"]["wait_s"] == WAIT_S
        # Why: the session is full, or (a slot just freed) others are ahead in line.
        assert re.search(r"its max_calls|earlier request\(s\) wait", w["data"]["message"])
        assert w["data"]["message"].endswith(f"({w['data']['position']} in line)")
    assert daemon.tool_cgroups() == []


@pytest.mark.parametrize("daemon", ["[session]\nmax_wait_s = 2"], indirect=True)
def test_a_wait_that_runs_out_and_a_session_closed_meanwhile(daemon: RunningDaemon) -> None:
    with Client() as owner:
        owner.open_session("one", max_calls=1)
        holder = owner.tool_call(session="one", label="hold").begin()
        # No wait asked: fails at once, as before.
        with pytest.raises(AgentcgError) as now:
            owner.tool_call(session="one").begin()
        assert now.value.code == "limit_exceeded" and "its max_calls" in now.value.message
        # A wait asked for 600 s is capped at the daemon's session.max_wait_s.
        t0 = time.monotonic()
        with pytest.raises(AgentcgError) as late:
            owner.tool_call(session="one", wait_s=600).begin()
        waited = time.monotonic() - t0
        assert late.value.code == "limit_exceeded"
        assert "no room came within its wait of 2 s" in late.value.message, late.value.message
        assert 2 <= waited < 60
        # The same line through `agentcg run`: one line saying it waits, then the error.
        cli = subprocess.run(
            [sys.executable, "-m", "agentcg.cli.main", "run", "-s", "one", "--", "true"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert cli.returncode == 1
        lines = cli.stderr.splitlines()
        assert lines[0].startswith("agentcg: session 'one' already runs 1 tool calls")
        assert "waiting up to 2 s for a slot (1 in line)" in lines[0]
        assert lines[-1].startswith("Error: session 'one'") and "within its wait" in lines[-1]
        # Closing the session fails its waiters at once.
        failed: list[AgentcgError] = []

        queued = threading.Event()

        def waiter() -> None:
            with Client(on_event=lambda m: m["event"] == "waiting" and queued.set()) as c:
                try:
                    c.tool_call(session="one", wait_s=600).begin()
                except AgentcgError as e:
                    failed.append(e)

        with Client() as other:
            # Same uid: it may use the session; it waits behind the holder.
            t = threading.Thread(target=waiter)
            t.start()
            assert queued.wait(120), "the waiter was never told it waits"
            assert other.request("session.close", session="one")["killed_calls"] == 1
            t.join(60)
        assert [e.code for e in failed] == ["not_found"] and "was closed" in failed[0].message
        with pytest.raises(AgentcgError, match="no running call"):
            owner.request("call.status", call=holder.id)  # ended with its session
    assert daemon.tool_cgroups() == []


def test_agentcg_run_waits_then_runs(daemon: RunningDaemon) -> None:
    with Client() as owner:
        owner.open_session("pair", max_calls=1)
        holder = owner.tool_call(session="pair", label="hold").begin()
        cli = subprocess.Popen(
            [sys.executable, "-m", "agentcg.cli.main", "run", "-s", "pair", "--", "echo", "ran"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert cli.stderr is not None
        first = cli.stderr.readline()
        assert "waiting up to 300 s for a slot (1 in line)" in first, first
        holder.end(0)
        out, rest = cli.communicate(timeout=300)
        assert cli.returncode == 0, rest
        assert out == "ran\n"
    assert daemon.tool_cgroups() == []

"""Throttle → freeze → kill inside a session near its memory budget, on the real kernel."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agentcg.client import Client, ToolCall
from agentcg.kernel.cgroup import Cgroup
from tests.kernel.daemon_fixture import RunningDaemon

pytestmark = pytest.mark.kernel

# Touch N MiB, say so, then hold it (or exit at once with "exit"); SIGUSR1 exits 7.
HOLD = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *_: sys.exit(7))\n"
    "b = bytearray(int(sys.argv[1]) << 20)\n"
    "b[::4096] = b'x' * len(b[::4096])\n"
    "print('ready', flush=True)\n"
    "time.sleep(0 if sys.argv[2] == 'exit' else 600)\n"
)


def hold_low_priority_call(c: Client, session: str) -> tuple[ToolCall, subprocess.Popen[str]]:
    """A low-priority call that takes 170 MiB of its 200M ask and keeps it."""
    low = c.tool_call(session=session, memory="200M", priority="low", label="build")
    holder = low.popen(
        [sys.executable, "-c", HOLD, "170", "hold"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    return low, holder


SESSION = "\n[session]\npressure_fraction = 0.75\nfreeze_grace_s = {}"


@pytest.mark.parametrize("daemon", [SESSION.format(1.0)], indirect=True, ids=["grace_1s"])
def test_low_priority_call_is_frozen_then_killed_for_a_critical_one(
    daemon: RunningDaemon,
) -> None:
    with Client() as c:
        # Budget 400M → session memory.high 300M. Each call stays inside its own ask;
        # together they do not fit under the session's memory.high.
        session = c.open_session("crowded", memory="400M")
        low, holder = hold_low_priority_call(c, session)

        result: dict[str, object] = {}

        def critical() -> None:
            with (
                Client() as c2,
                c2.tool_call(
                    session=session, memory="200M", priority="critical", label="pytest"
                ) as call,
            ):
                result["proc"] = call.run(
                    [sys.executable, "-c", HOLD, "180", "exit"], stdout=subprocess.PIPE
                )
            result["outcome"] = call.outcome

        t = threading.Thread(target=critical)
        t.start()
        t.join(600)
        assert not t.is_alive()
        holder.wait(60)
        low_outcome = low.end(holder.returncode)

    high = result["outcome"]
    assert isinstance(high, dict)
    assert high["exit_status"] == 0 and high["oom_kills"] == 0 and high["killed_reason"] is None
    assert not high["frozen"]
    assert holder.returncode == -9
    assert low_outcome["killed_reason"] == "pressure" and low_outcome["frozen"] is True
    assert "higher-priority" in low_outcome["advice"]
    names = [e["event"] for e in low.events]
    assert names.index("frozen") < names.index("killed"), names
    assert daemon.tool_cgroups() == []


@pytest.mark.parametrize("daemon", [SESSION.format(120.0)], indirect=True, ids=["grace_120s"])
def test_frozen_call_is_thawed_when_memory_comes_back(daemon: RunningDaemon) -> None:
    with Client() as c:
        session = c.open_session("breathing", memory="400M")
        low, holder = hold_low_priority_call(c, session)
        # A critical burst past the session's memory.high (170 + 140 MiB + two
        # interpreters > 300 MiB) that ends, and frees its memory, within the grace.
        with c.tool_call(
            session=session, memory="200M", priority="critical", label="pytest"
        ) as burst:
            burst.run([sys.executable, "-c", HOLD, "140", "exit"])
        assert burst.outcome is not None and burst.outcome["exit_status"] == 0
        assert "frozen" in [e["event"] for e in low.events]
        # The daemon looks every 0.25 s; memory is back now, so the holder runs again.
        deadline = time.monotonic() + 60
        while "thawed" not in [e["event"] for e in low.events]:
            assert time.monotonic() < deadline, low.events
            time.sleep(0.1)
        assert Cgroup(Path(low.info["cgroup"])).frozen is False
        assert holder.poll() is None
        # A handled signal proves it runs again (a fatal one would end even a frozen task).
        holder.send_signal(signal.SIGUSR1)
        holder.wait(60)
        outcome = low.end(holder.returncode)
    names = [e["event"] for e in low.events]
    assert names.index("frozen") < names.index("thawed") and "killed" not in names, names
    assert outcome["frozen"] is True
    assert outcome["killed_reason"] is None and outcome["exit_status"] == 7

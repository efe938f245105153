"""Docker containers labelled agentcg.session get that session from the daemon, which
follows the real engine's events: opened with the labels' budget and priority under the
container's own cgroup when it starts, used by the agent inside by default, closed
when the container stops."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcg.client.stats import fetch_stats
from agentcg.kernel.cgroup import Cgroup, find_cgroup2_mount
from tests.kernel.daemon_fixture import RunningDaemon
from tests.kernel.docker_engine import Engine, dockerd, run_agent  # noqa: F401  (fixture)

pytestmark = [pytest.mark.kernel, pytest.mark.requires("docker")]

WAIT_S = 240.0

# Inside the container: wait until the daemon gave it its session, run one tool call
# without naming a session, report where it ran, then stay up until stopped.
AGENT = """
import json, subprocess, time
from agentcg.client import Client
c = Client()
deadline = time.monotonic() + 200
while not [s for s in c.request("stats")["sessions"] if s["session"] == "boxed"]:
    assert time.monotonic() < deadline, "no session from the labels"
    time.sleep(0.2)
with c.tool_call(memory="16M", label="cat") as call:
    proc = call.run(["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE, text=True)
print(json.dumps({"session": call.info["session"], "cgroup": proc.stdout.strip()}), flush=True)
time.sleep(600)
"""


@pytest.fixture
def daemon_following(dockerd: Engine, tmp_path: Path) -> Iterator[RunningDaemon]:  # noqa: F811
    # No session GC: the container's end must close its session by Docker's event alone.
    config = f'[docker]\nsocket = "{dockerd.socket}"\n[session]\norphan_grace_s = "none"'
    d = RunningDaemon(tmp_path, config)
    d.start()
    yield d
    d.cleanup()


def sessions() -> dict[str, dict]:  # type: ignore[type-arg]
    return {s["session"]: s for s in fetch_stats()["sessions"]}


def wait(what: str, cond) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_labelled_container_gets_its_session_until_it_stops(
    dockerd: Engine,  # noqa: F811
    daemon_following: RunningDaemon,
) -> None:
    daemon = daemon_following
    labels = {"agentcg.session": "boxed", "agentcg.memory": "96M", "agentcg.priority": "high"}
    container = run_agent(dockerd, daemon.run_dir, AGENT, labels=labels)
    try:
        wait("the agent's report", lambda: b"session" in container.logs())
        seen = json.loads(container.logs().decode().strip().splitlines()[-1])
        boxed = sessions()["boxed"]
        # The labels' budget, owned by the container's root, bound to the container.
        assert boxed["memory"] == 96 << 20 and boxed["container"] == container.id
        assert boxed["owner_uid"] == 0
        # The agent's call without a session name ran in it, nested under the
        # container's own cgroup (which the container sees as /).
        assert seen["session"] == "boxed"
        assert seen["cgroup"].startswith("0::/agentcg/boxed/tools/c")
        mount = find_cgroup2_mount()
        assert mount is not None
        # The cgroupfs driver's /docker/<id> (what dockerd uses without systemd).
        session_cg = Cgroup(mount / "docker" / container.id / "agentcg" / "boxed")
        assert session_cg.exists()
        assert session_cg.read_int("cpu.weight") == 400  # priority "high"
        assert session_cg.read_int("memory.max") == 96 << 20
    finally:
        container.stop(timeout=1)
    wait("the session to close with its container", lambda: "boxed" not in sessions())
    container.remove(force=True)
    assert daemon.tool_cgroups() == []
    assert "container " + container.id[:12] + " stopped: closing session boxed" in (
        daemon.log_tail(100_000)
    )

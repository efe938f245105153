"""Agents inside real Docker containers: identity comes from the container, not the uid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.kernel.daemon_fixture import RunningDaemon
from tests.kernel.docker_engine import Engine, dockerd, run_agent  # noqa: F401  (fixture)

pytestmark = [pytest.mark.kernel, pytest.mark.requires("docker")]

# Runs inside the container as its root (= host uid 0, no user namespace): it must
# still be an ordinary agent, confined to its container's default session, which nests
# under the container's own cgroup so the container's limits hold for its tools.
AGENT = """
import json, os, subprocess
from agentcg.client import Client
from agentcg.core.errors import AgentcgError
c = Client()
out = {"peer": c.server["peer"]}
def code(op, **args):
    try:
        c.request(op, **args)
        return "ok"
    except AgentcgError as e:
        return e.code
out["list"] = code("list")
out["adopt"] = code("session.open", adopt=True)
with c.tool_call(memory="32M", label="cat") as call:
    proc = call.run(["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE, text=True)
out["call"] = call.id
out["session"] = call.info["session"]
out["tool_cgroup"] = proc.stdout.strip()
out["outcome"] = call.outcome["exit_status"]
# Attack: a tool call asking for more than the container has allocates 200 MiB.
with c.tool_call(memory="1G", label="dd") as call:
    out["dd"] = call.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]).returncode
# Attack: replace the daemon's socket with our own.
try:
    os.unlink("/run/agentcg/agentcg.sock")
    out["unlink"] = "ok"
except OSError as e:
    out["unlink"] = e.strerror
print(json.dumps(out), flush=True)
import time; time.sleep(600)  # until the test has looked at the session from outside
"""


def test_container_agent_is_bound_to_its_container(
    dockerd: Engine,  # noqa: F811  (the imported fixture)
    daemon: RunningDaemon,
) -> None:
    # The container's own memory limit: 128 MiB.
    container = run_agent(dockerd, daemon.run_dir, AGENT, mem_limit="128m")
    cid = container.id
    try:
        deadline = time.monotonic() + 300
        while b'"unlink"' not in container.logs():
            container.reload()
            assert container.status == "running", container.logs().decode(errors="replace")
            assert time.monotonic() < deadline, "the agent never reported"
            time.sleep(0.5)
        seen = json.loads(container.logs().decode().strip().splitlines()[-1])
        # The host's root (admin) sees that session bound to the container.
        assert status_json(daemon)[f"ctr-{cid[:12]}"]["container"] == cid
    finally:
        container.remove(force=True)
    assert seen["peer"]["uid"] == 0 and seen["peer"]["container"] == cid
    assert seen["peer"]["confined"] is True
    # Root in a container is not an admin; adopting itself keeps it inside the container.
    assert seen["list"] == "unauthorized"
    assert seen["adopt"] == "ok"
    # Its tool call ran in the container's default session, nested under the container's
    # cgroup (the container sees its own cgroup as /), in its own leaf.
    assert seen["session"] == f"ctr-{cid[:12]}"
    assert seen["tool_cgroup"] == f"0::/agentcg/ctr-{cid[:12]}/tools/{seen['call']}"
    assert seen["outcome"] == 0
    # The container's 128 MiB still bound the 1 GiB call: its 200 MiB allocation died.
    assert seen["dd"] == -9
    assert seen["unlink"] == "Read-only file system"
    # The container is gone, and its session with it (closed as soon as its cgroup went).
    deadline = time.monotonic() + 120
    while f"ctr-{cid[:12]}" in status_json(daemon):
        assert time.monotonic() < deadline, "the session outlived its container"
        time.sleep(0.5)
    assert daemon.tool_cgroups() == []


def status_json(daemon: RunningDaemon) -> dict[str, dict[str, Any]]:
    listed = subprocess.run(
        [sys.executable, "-m", "agentcg.cli.main", "status", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "AGENTCG_SOCKET": str(daemon.socket)},
        check=True,
    )
    return {s["session"]: s for s in json.loads(listed.stdout)["sessions"]}

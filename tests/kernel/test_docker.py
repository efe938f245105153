"""Agents inside real Docker containers: identity comes from the container, not the uid."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.kernel.daemon_fixture import RunningDaemon

pytestmark = [pytest.mark.kernel, pytest.mark.requires("docker")]

ROOT = Path(__file__).resolve().parents[2]

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
print(json.dumps(out))
"""


def _busybox_image() -> bytes:
    """A root filesystem with only a static busybox; the rest is bind-mounted."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(shutil.which("busybox") or "/bin/busybox", arcname="bin/busybox")
        for name in ("sh", "cat", "true", "dd"):
            link = tarfile.TarInfo(f"bin/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for d in ("usr", "lib", "lib64", "etc", "proc", "sys", "tmp", "run/agentcg", "work"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[docker.DockerClient]:
    data = tmp_path_factory.mktemp("docker")
    sock = f"/run/agentcg-docker-{secrets.token_hex(3)}.sock"
    log = (data / "dockerd.log").open("wb")
    dockerd = subprocess.Popen(
        [
            "dockerd",
            "--data-root",
            str(data / "root"),
            "--exec-root",
            str(data / "exec"),
            "--pidfile",
            str(data / "dockerd.pid"),
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--host",
            f"unix://{sock}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(sock):
            assert dockerd.poll() is None, (data / "dockerd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "dockerd did not start"
            time.sleep(0.2)
        client = docker.DockerClient(base_url=f"unix://{sock}", timeout=240)
        client.api.import_image_from_data(
            _busybox_image(), repository="agentcg-test", tag="busybox"
        )
        yield client
        client.close()
    finally:
        dockerd.terminate()
        dockerd.wait(60)


def test_container_agent_is_bound_to_its_container(
    engine: docker.DockerClient, daemon: RunningDaemon
) -> None:
    ro = {"bind": None, "mode": "ro"}
    volumes = {p: {**ro, "bind": p} for p in ("/usr", "/lib", "/lib64", "/etc", str(ROOT))}
    # Agents get the socket's directory, and read-only is enough to connect.
    volumes[str(daemon.run_dir)] = {"bind": "/run/agentcg", "mode": "ro"}
    container = engine.containers.run(
        "agentcg-test:busybox",
        ["/usr/bin/python3", "-c", AGENT],
        detach=True,
        network_mode="none",
        mem_limit="128m",
        security_opt=["apparmor=unconfined"],  # the guest kernel has AppArmor, no parser
        volumes=volumes,
        environment={
            "PYTHONPATH": str(ROOT),
            "AGENTCG_SOCKET": "/run/agentcg/agentcg.sock",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
        working_dir="/",
    )
    try:
        result = container.wait(timeout=300)
        logs = container.logs().decode(errors="replace")
        assert result["StatusCode"] == 0, logs
        seen = json.loads(logs.strip().splitlines()[-1])
    finally:
        container.remove(force=True)
    cid = container.id
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
    # The host's root (admin) sees that session bound to the container.
    listed = subprocess.run(
        [sys.executable, "-m", "agentcg.cli.main", "status", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "AGENTCG_SOCKET": str(daemon.socket)},
        check=True,
    )
    sessions = {s["session"]: s for s in json.loads(listed.stdout)["sessions"]}
    assert sessions[f"ctr-{cid[:12]}"]["container"] == cid
    assert daemon.tool_cgroups() == []

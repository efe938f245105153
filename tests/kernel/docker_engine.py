"""A real Docker engine for kernel tests: dockerd on a private socket and data root,
with a busybox image imported from the host (no registry is reachable)."""

from __future__ import annotations

import io
import secrets
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container

IMAGE = "agentcg-test:busybox"
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600.0  # Go binaries read over 9p and run under TCG, on a busy machine


@dataclass(frozen=True)
class Engine:
    client: docker.DockerClient
    socket: Path


def run_agent(engine: Engine, run_dir: Path, code: str, **options: Any) -> Container:
    """Start ``python3 -c code`` as an agent in a container of the test image: the host's
    /usr, /lib, /etc and this checkout read-only, the daemon's socket directory (``run_dir``,
    read-only is enough to connect) at /run/agentcg, no network; ``options`` go to
    ``containers.run`` (limits, labels)."""
    ro = {"bind": None, "mode": "ro"}
    volumes = {p: {**ro, "bind": p} for p in ("/usr", "/lib", "/lib64", "/etc", str(ROOT))}
    volumes[str(run_dir)] = {"bind": "/run/agentcg", "mode": "ro"}
    return engine.client.containers.run(
        IMAGE,
        ["/usr/bin/python3", "-c", code],
        detach=True,
        network_mode="none",
        security_opt=["apparmor=unconfined"],  # the guest kernel has AppArmor, no parser
        volumes=volumes,
        environment={
            "PYTHONPATH": str(ROOT),
            "AGENTCG_SOCKET": "/run/agentcg/agentcg.sock",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
        working_dir="/",
        **options,
    )


def busybox_image() -> bytes:
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


def _wait_for(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        assert proc.poll() is None, f"{what} exited:\n" + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} did not start:\n" + log.read_text()[-3000:]
        time.sleep(0.5)


def _answers(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, timeout=120).returncode == 0


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    data = tmp_path_factory.mktemp("docker")
    tag = secrets.token_hex(3)
    sock = Path(f"/run/agentcg-docker-{tag}.sock")
    # containerd first, on its own: dockerd gives the one it starts itself a fixed few
    # seconds, too few for a loaded emulated machine.
    ctr_sock = f"/run/agentcg-containerd-{tag}.sock"
    ctr_log = data / "containerd.log"
    containerd = subprocess.Popen(
        [
            *("containerd", "--address", ctr_sock),
            *("--root", str(data / "containerd"), "--state", str(data / "containerd-state")),
        ],
        stdout=ctr_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    log = data / "dockerd.log"
    procs = [containerd]
    try:
        _wait_for("containerd", lambda: _answers(["ctr", "--address", ctr_sock, "version"]),
                  containerd, ctr_log)  # fmt: skip
        engine = subprocess.Popen(
            [
                "dockerd",
                f"--containerd={ctr_sock}",
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
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        procs.insert(0, engine)
        _wait_for("dockerd", lambda: sock.exists() and _answers_api(sock), engine, log)
        client = docker.DockerClient(base_url=f"unix://{sock}", timeout=240)
        repo, tag = IMAGE.split(":")
        client.api.import_image_from_data(busybox_image(), repository=repo, tag=tag)
        yield Engine(client, sock)
        client.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)


def _answers_api(sock: Path) -> bool:
    """dockerd accepts connections before it can answer (it resets them meanwhile)."""
    try:
        docker.DockerClient(base_url=f"unix://{sock}", timeout=30).close()
    except (docker.errors.DockerException, OSError):
        return False
    return True

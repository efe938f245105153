"""Docker: whether the engine's socket accepts connections."""

from __future__ import annotations

import socket
from pathlib import Path

from agentcg.cli.doctor.base import OK, WARN, Check, Findings, Host

DOCKER_SOCKETS = (Path("/run/docker.sock"), Path("/var/run/docker.sock"))


def collect(host: Host) -> Findings:
    check = docker_check()
    return [check], {"docker": check.status == OK}


def docker_check(sockets: tuple[Path, ...] = DOCKER_SOCKETS) -> Check:
    tried = []
    for path in sockets:
        if not path.exists():
            tried.append(f"{path}: absent")
            continue
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return Check(
                "Docker",
                OK,
                f"Docker socket {path} accepts connections",
                f"connect {path}",
                ("docker",),
            )
        except OSError as e:
            tried.append(f"{path}: {e.strerror or e}")
        finally:
            s.close()
    return Check(
        "Docker",
        WARN,
        "no reachable Docker socket (" + "; ".join(tried) + ")",
        "connect " + ", ".join(map(str, sockets)),
        ("docker",),
    )

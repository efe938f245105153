"""sd_notify over a real datagram socket, the way systemd listens for it."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from agentcg.daemon.notify import Notifier


def listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    return sock


def messages(sock: socket.socket, n: int) -> list[dict[str, str]]:
    return [dict(f.split("=", 1) for f in sock.recv(4096).decode().split("\n")) for _ in range(n)]


def test_no_notify_socket_means_no_notifier():
    assert Notifier.from_env(lambda: "", env={}) is None
    assert Notifier.from_env(lambda: "", env={"NOTIFY_SOCKET": "relative"}) is None


def test_ready_status_watchdog_stopping(tmp_path: Path):
    sock = listener(tmp_path / "notify")
    status = ["0 sessions"]
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    n = Notifier.from_env(lambda: status[0], env=env)
    assert n is not None and n.watchdog_s == 0.2

    async def run() -> None:
        n.ready(asyncio.get_running_loop())
        status[0] = "1 sessions"
        await asyncio.sleep(0.35)  # the keep-alive comes every half watchdog period
        n.stopping()

    asyncio.run(run())
    got = []
    while not got or "STOPPING" not in got[-1]:
        got += messages(sock, 1)
    ready, *alive, stopping = got
    assert ready["READY"] == "1" and ready["STATUS"] == "0 sessions"
    assert ready["MAINPID"] == str(os.getpid())
    # Keep-alives every half watchdog period; STATUS only with the first after a change.
    assert len(alive) >= 2 and all(m["WATCHDOG"] == "1" for m in alive)
    assert alive[0]["STATUS"] == "1 sessions"
    assert all("STATUS" not in m for m in alive[1:])
    assert stopping["STOPPING"] == "1"


def test_watchdog_for_another_pid_is_not_ours(tmp_path: Path):
    env = {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    n = Notifier.from_env(lambda: "", env=env)
    assert n is not None and n.watchdog_s is None


def test_abstract_socket_address():
    n = Notifier.from_env(lambda: "", env={"NOTIFY_SOCKET": "@agentcg-test"})
    assert n is not None and n.address == "\0agentcg-test"

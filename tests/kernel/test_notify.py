"""The daemon speaks systemd's notify protocol: READY once its socket listens, STATUS
with sessions, calls and clients, WATCHDOG keep-alives from its loop, STOPPING."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentcg.client import Client
from tests.kernel.daemon_fixture import RunningDaemon

pytestmark = pytest.mark.kernel

WAIT_S = 120.0


class Manager:
    """The service manager's end: a datagram socket at $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[dict[str, str]] = []

    def wait(self, what: str, cond: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        deadline = time.monotonic() + WAIT_S
        while True:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(f"no {what}; got {self.seen}") from None
            msg = dict(f.split("=", 1) for f in data.split("\n"))
            self.seen.append(msg)
            if cond(msg):
                return msg


def test_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    manager = Manager(tmp_path / "notify")
    d = RunningDaemon(tmp_path)
    os.environ.update(NOTIFY_SOCKET=str(manager.path), WATCHDOG_USEC="2000000")
    try:
        d.start()
    finally:
        del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
    try:
        assert d.proc is not None
        ready = manager.wait("READY=1", lambda m: m.get("READY") == "1")
        assert ready["MAINPID"] == str(d.proc.pid)
        assert ready["STATUS"].startswith("0 sessions, 0 tool calls")
        with Client() as c:
            c.open_session("noticed")
            status = manager.wait("a new STATUS", lambda m: "1 sessions" in m.get("STATUS", ""))
            assert status["STATUS"] == "1 sessions, 0 tool calls, 1 clients"
        before = sum(1 for m in manager.seen if m.get("WATCHDOG") == "1")
        manager.wait("two more keep-alives", lambda m: sum(
            1 for m in manager.seen if m.get("WATCHDOG") == "1") >= before + 2)  # fmt: skip
        d.stop()
        manager.wait("STOPPING=1", lambda m: m.get("STOPPING") == "1")
    finally:
        d.cleanup()

"""systemd's notify protocol (sd_notify) without libsystemd: READY, STATUS, WATCHDOG.

With ``Type=notify`` systemd sets $NOTIFY_SOCKET (a datagram socket path, or an
abstract one written with a leading "@"); with ``WatchdogSec=`` also $WATCHDOG_USEC
(and $WATCHDOG_PID, which must be us). The keep-alive is sent from the event loop
itself, so a loop that stops turning is restarted by systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("agentcg.daemon")

STATUS_INTERVAL_S = 5.0  # STATUS refresh when there is no watchdog, or a slow one


class Notifier:
    def __init__(self, address: str, watchdog_s: float | None, status: Callable[[], str]) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = watchdog_s
        self.status = status
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._timer: asyncio.TimerHandle | None = None
        self._last_status = ""

    @classmethod
    def from_env(
        cls, status: Callable[[], str], env: Mapping[str, str] = os.environ
    ) -> Notifier | None:
        """None unless a service manager asked for notifications."""
        address = env.get("NOTIFY_SOCKET", "")
        if not address.startswith(("/", "@")):
            return None
        watchdog_s = None
        usec, wpid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not wpid or wpid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(address, watchdog_s, status)

    def send(self, *fields: str) -> None:
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as e:  # the manager went away: nothing to tell anyone
            log.warning("sd_notify to %s failed: %s", self.address.lstrip("\0"), e)

    def ready(self, loop: asyncio.AbstractEventLoop) -> None:
        self._last_status = self.status()
        self.send("READY=1", f"STATUS={self._last_status}", f"MAINPID={os.getpid()}")
        self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        # Half the watchdog period, as sd_watchdog_enabled(3) advises.
        interval = STATUS_INTERVAL_S
        if self.watchdog_s:
            interval = min(self.watchdog_s / 2, STATUS_INTERVAL_S)
        self._timer = loop.call_later(interval, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        fields = []
        if self.watchdog_s:
            fields.append("WATCHDOG=1")
        status = self.status()
        if status != self._last_status:
            fields.append(f"STATUS={status}")
            self._last_status = status
        if fields:
            self.send(*fields)
        self._schedule(loop)

    def stopping(self) -> None:
        if self._timer:
            self._timer.cancel()
        self.send("STOPPING=1", "STATUS=stopping; running tool calls keep running")
        with contextlib.suppress(OSError):
            self._sock.close()

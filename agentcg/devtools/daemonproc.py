"""`agentcg daemon` as a child process with a private cgroup root, run dir and config:
the one daemon-process helper of `agentcg bench` and the kernel-tier tests.

Needs root and a cgroup v2 mount with the memory controller. Everything it creates is
named ``agentcg-<name>-<tag>`` (random tag) so runs never collide.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import agentcg
from agentcg.kernel.cgroup import Cgroup, find_cgroup2_mount

START_TIMEOUT_S = 300.0  # a first start compiles every module; minutes under a busy TCG
STOP_TIMEOUT_S = 30.0
# The directory that holds the agentcg package the caller runs: the child runs it too.
PACKAGE_PARENT = Path(agentcg.__file__).resolve().parents[1]


class DaemonProcess:
    """One daemon: `config` is extra TOML appended after its ``[daemon]`` table (more
    ``[daemon]`` keys, or further tables); its config file and log live in `work_dir`."""

    def __init__(self, name: str, work_dir: Path, config: str = "") -> None:
        mount = find_cgroup2_mount()
        if mount is None:
            raise RuntimeError("no cgroup v2 mount: run `agentcg doctor`")
        tag = secrets.token_hex(4)
        self.root = Cgroup(mount / f"agentcg-{name}-{tag}")
        # The socket's directory (what agents get) and the daemon's private state apart.
        self.run_dir = Path(f"/run/agentcg-{name}-{tag}")
        self.socket = self.run_dir / "agentcg.sock"
        self.state_dir = Path(f"/run/agentcg-{name}-{tag}.state")
        self.config = work_dir / f"agentcg-{name}-{tag}.toml"
        self.config.write_text(
            f'[daemon]\nroot = "{self.root.path}"\nsocket = "{self.socket}"\n'
            f'state_dir = "{self.state_dir}"\n' + (config + "\n" if config else "")
        )
        self.log = work_dir / f"daemon-{name}-{tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, preexec: Callable[[], None] | None = None) -> None:
        """Start it (again, after a stop or kill) with extra `agentcg daemon` arguments;
        return once it listens."""
        # Readiness from the log, not a probe connection: a probe would count against
        # max_connections, and a killed daemon leaves a stale socket file behind.
        ready_before = self._ready_lines()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH")) if p
        )
        argv = [sys.executable, "-m", "agentcg.cli.main", "daemon", "--config", str(self.config)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*argv, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._ready_lines() == ready_before:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def _ready_lines(self) -> int:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return text.count(f"listening on {self.socket}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no daemon log)"

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within STOP_TIMEOUT_S."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tool_cgroups(self) -> list[Path]:
        return sorted(p for p in self.root.path.glob("sessions/*/tools/*") if p.is_dir())

    def remove(self) -> None:
        """Stop it; remove its cgroup subtree (killing what is left in it) and its dirs."""
        self.stop()
        try:
            if self.root.exists():
                self.root.remove_tree(kill=True, timeout=10)
        finally:
            for d in (self.run_dir, self.state_dir):
                shutil.rmtree(d, ignore_errors=True)

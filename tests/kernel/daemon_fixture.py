"""A real agentcg daemon in its own cgroup subtree, for kernel-tier tests."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentcg.kernel.cgroup import Cgroup, find_cgroup2_mount

# Compiling the memory probe takes minutes under emulation: daemons of the kernel tier
# watch memory through the fallback unless a test asks for "[memory]\nbpf = true".
NO_BPF = "[memory]\nbpf = false"


class RunningDaemon:
    def __init__(self, tmp: Path, extra_config: str = "") -> None:
        if "[memory]" not in extra_config:
            extra_config = f"{extra_config}\n{NO_BPF}\n"
        mount = find_cgroup2_mount()
        assert mount is not None
        tag = secrets.token_hex(4)
        self.root = Cgroup(mount / f"agentcg-test-{tag}")
        self.run_dir = Path(f"/run/agentcg-test-{tag}")
        self.socket = self.run_dir / "agentcg.sock"
        self.config = tmp / f"agentcg-{tag}.toml"
        self.config.write_text(
            f'[daemon]\nroot = "{self.root.path}"\nsocket = "{self.socket}"\n'
            f'state_dir = "{self.run_dir}"\nsocket_mode = "0666"\nreclaim_grace_s = 5\n'
            + extra_config
        )
        self.log = tmp / f"daemon-{tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, preexec: Callable[[], None] | None = None) -> None:
        # Readiness from the log, not a probe connection: a probe would count against
        # max_connections, and a killed daemon leaves a stale socket file behind.
        ready_before = self._ready_lines()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentcg.cli.main",
                "daemon",
                "-v",
                "--config",
                str(self.config),
                *args,
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
        deadline = time.monotonic() + 60
        while self._ready_lines() == ready_before:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        os.environ["AGENTCG_SOCKET"] = str(self.socket)

    def _ready_lines(self) -> int:
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count(f"listening on {self.socket}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def tool_cgroups(self) -> list[Path]:
        return sorted(p for p in self.root.path.glob("sessions/*/tools/*") if p.is_dir())

    def cleanup(self) -> None:
        self.stop()
        # Shown by pytest when the test failed.
        print(f"--- daemon log {self.log}\n{self.log.read_text(errors='replace')[-6000:]}")
        if self.root.exists():
            # Put the test process back where it can be removed from.
            self.root.remove_tree(kill=True, timeout=10)


@pytest.fixture
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningDaemon]:
    """A fresh daemon. Tune it with indirect parametrization: the param is extra TOML
    lines for its [daemon] table, e.g. ``parametrize("daemon", ["frame_timeout_s = 2"],
    indirect=True)``."""
    extra = getattr(request, "param", "")
    d = RunningDaemon(tmp_path, extra + "\n" if extra else "")
    d.start()
    yield d
    d.cleanup()

"""A real agentcg daemon in its own cgroup subtree, for kernel-tier tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentcg.devtools.daemonproc import DaemonProcess

BASE_CONFIG = 'socket_mode = "0666"\nreclaim_grace_s = 5'
# Compiling the memory probe takes minutes under emulation: daemons of the kernel tier
# watch memory through the fallback unless a test asks for "[memory]\nbpf = true".
NO_BPF = "[memory]\nbpf = false"
# Likewise agentcg's sched_ext scheduler: only tests that ask for "[sched]" load it.
NO_SCHED = "[sched]\nenabled = false"


class RunningDaemon(DaemonProcess):
    """The shared daemon helper, verbose (every request logged), its socket open to all
    uids, and exported as $AGENTCG_SOCKET for the SDK and CLI in the test."""

    def __init__(self, tmp: Path, extra_config: str = "") -> None:
        extra = extra_config if "[memory]" in extra_config else f"{extra_config}\n{NO_BPF}"
        extra = extra if "[sched]" in extra else f"{extra}\n{NO_SCHED}"
        super().__init__("test", tmp, f"{BASE_CONFIG}\n{extra}")

    def start(self, *args: str, preexec: Callable[[], None] | None = None) -> None:
        super().start("-v", *args, preexec=preexec)
        os.environ["AGENTCG_SOCKET"] = str(self.socket)

    def cleanup(self) -> None:
        self.stop()
        # Shown by pytest when the test failed.
        print(f"--- daemon log {self.log}\n{self.log_tail(6000)}")
        self.remove()


@pytest.fixture
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningDaemon]:
    """A fresh daemon. Tune it with indirect parametrization: the param is extra TOML
    lines for its [daemon] table, e.g. ``parametrize("daemon", ["frame_timeout_s = 2"],
    indirect=True)``."""
    d = RunningDaemon(tmp_path, getattr(request, "param", ""))
    d.start()
    yield d
    d.cleanup()

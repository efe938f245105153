"""A real agentcg daemon in its own cgroup subtree, for kernel-tier tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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

    def log_text(self) -> str:
        return self.log_tail(1 << 30)

    def log_size(self) -> int:
        return len(self.log_text())

    def cleanup(self) -> None:
        self.stop()
        # Shown by pytest when the test failed.
        print(f"--- daemon log {self.log}\n{self.log_tail(6000)}")
        self.remove()


# Starting a daemon costs ~12 s under emulation, so tests of one module share one
# daemon per config unless marked fresh_daemon (tests that stop, kill or restart it,
# or count what it did since it started).
SETTLE_S = 60.0


@pytest.fixture(scope="module")
def _module_daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    shared: dict[str, RunningDaemon] = {}
    yield shared
    for d in shared.values():
        d.stop()
        d.remove()


def _settled(d: RunningDaemon) -> None:
    """The previous test's calls are gone (their removal runs in the background)."""
    deadline = time.monotonic() + SETTLE_S
    while d.tool_cgroups():
        if time.monotonic() > deadline:
            raise AssertionError(f"a previous test left tool calls behind: {d.tool_cgroups()}")
        time.sleep(0.1)


@pytest.fixture
def daemon(
    request: pytest.FixtureRequest, tmp_path: Path, _module_daemons: dict[str, RunningDaemon]
) -> Iterator[RunningDaemon]:
    """A daemon. Tune it with indirect parametrization: the param is extra TOML lines
    for its [daemon] table, e.g. ``parametrize("daemon", ["frame_timeout_s = 2"],
    indirect=True)``. Shared by the module's tests with the same param, unless the test
    (or its module) is marked ``fresh_daemon``."""
    param = getattr(request, "param", "")
    if request.node.get_closest_marker("fresh_daemon"):
        d = RunningDaemon(tmp_path, param)
        d.start()
        yield d
        d.cleanup()
        return
    d = _module_daemons.get(param)
    if d is None or d.proc is None or d.proc.poll() is not None:
        if d is not None:
            d.remove()
        d = RunningDaemon(tmp_path, param)
        d.start()
        _module_daemons[param] = d
    os.environ["AGENTCG_SOCKET"] = str(d.socket)
    _settled(d)
    since = d.log_size()
    yield d
    # Shown by pytest when the test failed: what the daemon said during it.
    print(f"--- daemon log {d.log} during the test\n{d.log_text()[since:][-6000:]}")

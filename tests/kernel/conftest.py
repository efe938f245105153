"""The kernel tier runs wherever the kernel can enforce: inside the test VM
(scripts/vm-run) or directly on any host with cgroup v2 and its memory, cpu and pids
controllers, as root. One capability probe decides, read-only (it never opens a
cgroup v1 hierarchy); a test that needs more says so with
``@pytest.mark.requires("bcc")`` and is skipped with the missing feature named.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from agentcg.kernel.cgroup import find_cgroup2_mount, v1_controllers
from tests.kernel.daemon_fixture import _module_daemons, daemon  # noqa: F401  (fixtures)
from tests.kernel.other_uid import for_others  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
CONTROLLERS = ("memory", "cpu", "pids")
IN_VM = "or run in the test VM: scripts/vm-run -- .venv/bin/python -m pytest -m kernel tests/kernel"


def _cgroup2() -> str | None:
    """Root, and a cgroup v2 mount whose root offers memory, cpu and pids."""
    if os.geteuid() != 0:
        return "root (the kernel tier creates cgroups)"
    mount = find_cgroup2_mount()
    if mount is None:
        return "a cgroup v2 mount (none here)"
    try:
        available = set((mount / "cgroup.controllers").read_text().split())
    except OSError as e:
        return f"a readable {mount}/cgroup.controllers ({e.strerror})"
    missing = [c for c in CONTROLLERS if c not in available]
    if not missing:
        return None
    on_v1 = sorted(set(missing) & set(v1_controllers()))
    where = f", {'/'.join(on_v1)} bound to cgroup v1" if on_v1 else ""
    return f"cgroup v2 controllers {', '.join(missing)} at {mount} (absent{where})"


def _bcc() -> str | None:
    try:
        importlib.import_module("bcc")
    except Exception as e:  # a broken libbcc raises assorted errors
        return f"bcc (python3-bpfcc not importable: {e})"
    build = Path("/lib/modules", os.uname().release, "build")
    return None if build.exists() else f"bcc kernel headers at {build}"


def _sched_ext() -> str | None:
    state = Path("/sys/kernel/sched_ext/state")
    return None if state.exists() else f"sched_ext ({state} absent: CONFIG_SCHED_CLASS_EXT off)"


def _docker() -> str | None:
    if importlib.util.find_spec("docker") is None:
        return "docker (the python docker package is not installed)"
    return None if shutil.which("dockerd") else "docker (no dockerd on PATH)"


def _test_kernel() -> str | None:
    env = (ROOT / "scripts/kernel.env").read_text().splitlines()
    kver = next(line.split("=", 1)[1] for line in env if line.startswith("KVER="))
    here = os.uname().release
    return None if here == kver else f"the pinned test kernel {kver} (this is {here})"


# Feature name -> probe: None when present, else what is missing (used as skip reason).
FEATURES: dict[str, Callable[[], str | None]] = {
    "cgroup2": _cgroup2,
    "bcc": _bcc,
    "sched_ext": _sched_ext,
    "docker": _docker,
    "test_kernel": _test_kernel,
}


@cache
def missing(feature: str) -> str | None:
    return FEATURES[feature]()


def pytest_configure(config: pytest.Config) -> None:
    # Child processes (daemon, CLI, agents) import this checkout, whatever the cwd and
    # whichever checkout the venv's editable install points at.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    config.addinivalue_line(
        "markers",
        "requires(*features): kernel features a kernel test needs besides cgroup2 "
        f"(one of {', '.join(FEATURES)})",
    )
    config.addinivalue_line(
        "markers",
        "fresh_daemon: the test gets a daemon of its own instead of the one its module's "
        "tests share (it stops, kills or restarts it, or counts what it did)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Kernel tests must never silently pass on the wrong machine: skip, naming why.
    for item in items:
        if "kernel" not in item.keywords:
            continue
        wanted = ["cgroup2"]
        for mark in item.iter_markers("requires"):
            unknown = [f for f in mark.args if f not in FEATURES]
            if unknown:
                raise pytest.UsageError(f"{item.nodeid}: unknown feature(s) {unknown}")
            wanted += mark.args
        reasons = [r for f in dict.fromkeys(wanted) if (r := missing(f))]
        if reasons:
            item.add_marker(pytest.mark.skip(reason=f"needs {'; '.join(reasons)} ({IN_VM})"))

"""A scratch cgroup for kernel tests that work on raw cgroups (test VM only)."""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from agentcg.kernel.cgroup import Cgroup, find_cgroup2_mount

CONTROLLERS = ("memory", "cpu", "pids")


@contextmanager
def scratch_cgroup() -> Iterator[Cgroup]:
    """A fresh cgroup under the cgroup2 root with memory, cpu and pids for its children;
    removed (killing what is left) afterwards.

    Refuses to run outside the VM: the development host's cgroups belong to its supervisor.
    """
    if os.environ.get("AGENTCG_IN_VM") != "1":
        pytest.skip("kernel tests run only inside the test VM (scripts/vm-run)")
    mount = find_cgroup2_mount()
    assert mount is not None, "cgroup2 is not mounted in the guest"
    top = Cgroup(mount)
    assert "memory" in top.controllers(), f"{mount} has no memory controller"
    # The root cgroup is exempt from the no-internal-process rule.
    top.enable_controllers(CONTROLLERS)
    base = top.child(f"agentcg-test-{secrets.token_hex(4)}").create()
    try:
        base.enable_controllers(CONTROLLERS)
        yield base
    finally:
        base.remove_tree(kill=True, timeout=60)
    assert not base.path.exists()

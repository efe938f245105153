"""A scratch cgroup for kernel tests that work on raw cgroups."""

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from agentcg.kernel.cgroup import Cgroup, find_cgroup2_mount

CONTROLLERS = ("memory", "cpu", "pids")


@contextmanager
def scratch_cgroup() -> Iterator[Cgroup]:
    """A fresh cgroup under the cgroup2 root with memory, cpu and pids for its children;
    removed (killing what is left) afterwards.

    Only reached where tests/kernel/conftest.py found cgroup v2 with these controllers;
    the asserts below guard against writing anywhere else.
    """
    mount = find_cgroup2_mount()
    assert mount is not None, "cgroup2 is not mounted"
    top = Cgroup(mount)
    assert set(CONTROLLERS) <= top.controllers(), f"{mount} lacks one of {CONTROLLERS}"
    # The root cgroup is exempt from the no-internal-process rule.
    top.enable_controllers(CONTROLLERS)
    base = top.child(f"agentcg-test-{secrets.token_hex(4)}").create()
    try:
        base.enable_controllers(CONTROLLERS)
        yield base
    finally:
        base.remove_tree(kill=True, timeout=60)
    assert not base.path.exists()

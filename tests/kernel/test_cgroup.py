"""agentcg.kernel.cgroup against the real 7.3 kernel: limits, OOM, kill, freeze, removal."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentcg.kernel.cgroup import Cgroup, CgroupError, cgroup_path_of_pid
from tests.kernel.cgroup_fixture import scratch_cgroup

pytestmark = pytest.mark.kernel


@pytest.fixture
def cgroup_base():
    with scratch_cgroup() as base:
        yield base


MiB = 1 << 20
# Everything is slow under TCG emulation: generous bounds, still finite.
WAIT = 60.0


def spawn_in(leaf: Cgroup, code: str) -> subprocess.Popen:
    """Start a python child that runs `code` only after it has been moved into `leaf`
    (it blocks on one byte of stdin), like a tool call that attaches before exec."""
    p = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.stdin.buffer.read(1)\n{code}"],
        stdin=subprocess.PIPE,
    )
    leaf.add_process(p.pid)
    assert p.stdin is not None
    p.stdin.write(b"g")
    p.stdin.close()
    return p


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_limits_read_back_and_stats(cgroup_base):
    leaf = cgroup_base.child("limits").create()
    assert {"memory", "cpu", "pids"} <= leaf.controllers()
    leaf.set_memory_high(96 * MiB)
    leaf.set_memory_max(128 * MiB)
    leaf.set_memory_low(16 * MiB)
    leaf.set_memory_min(0)
    leaf.set_cpu_weight(400)
    leaf.set_cpu_max((50_000, 100_000))
    leaf.set_pids_max(64)
    assert leaf.read_int("memory.high") == 96 * MiB
    assert leaf.read_int("memory.max") == 128 * MiB
    assert leaf.read_int("memory.low") == 16 * MiB
    assert leaf.read_int("cpu.weight") == 400
    assert leaf.read("cpu.max").split() == ["50000", "100000"]
    assert leaf.read_int("pids.max") == 64
    leaf.set_memory_max(None)
    leaf.set_cpu_max(None)
    leaf.set_pids_max(None)
    assert leaf.read_int("memory.max") is None
    assert leaf.read("cpu.max").split()[0] == "max"
    assert leaf.read_int("pids.max") is None
    assert leaf.memory_current() == 0 and leaf.pids_current() == 0
    assert leaf.memory_peak() is not None
    assert "usage_usec" in leaf.cpu_stat() and "anon" in leaf.memory_stat()
    assert {"some", "full"} <= set(leaf.pressure("memory"))
    assert leaf.events() == {"populated": 0, "frozen": 0}
    with pytest.raises(CgroupError) as e:
        leaf.set_memory_high(-5)
    assert e.value.code == "invalid_value"


def test_oom_kill_at_memory_max(cgroup_base):
    leaf = cgroup_base.child("oom").create()
    leaf.set_memory_max(64 * MiB)
    if leaf.has_file("memory.swap.max"):
        leaf.set_memory_swap_max(0)  # else the guest could swap instead of OOM-killing
    # Repetition writes every byte, so the pages are really charged (unlike calloc).
    p = spawn_in(leaf, "b = bytearray(b'\\x01') * (256 << 20)")
    assert p.wait(timeout=WAIT * 2) == -9
    events = leaf.memory_events()
    assert events["oom_kill"] >= 1 and events["max"] >= 1
    peak = leaf.memory_peak()
    assert peak is not None and 32 * MiB < peak <= 64 * MiB
    assert leaf.wait_populated(False, WAIT)


def test_kill_empties_populated_leaf(cgroup_base):
    leaf = cgroup_base.child("kill").create()
    p = spawn_in(leaf, "import time; time.sleep(600)")
    assert leaf.populated and leaf.procs() == [p.pid]
    assert Cgroup.of_pid(p.pid) == leaf
    assert cgroup_path_of_pid(p.pid).endswith(f"/{cgroup_base.name}/kill")
    leaf.kill()
    assert leaf.wait_populated(False, WAIT)
    assert p.wait(timeout=WAIT) == -9
    leaf.remove()
    assert not leaf.exists()


def test_freeze_and_thaw(cgroup_base):
    leaf = cgroup_base.child("freeze").create()
    p = spawn_in(leaf, "while True: pass")
    try:
        time.sleep(0.5)
        leaf.freeze()
        assert leaf.wait_frozen(WAIT)
        assert leaf.frozen and leaf.events()["frozen"] == 1
        state = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state != "R"  # parked in the freezer trap, not running
        t0 = cpu_ticks(p.pid)
        time.sleep(1.0)
        assert cpu_ticks(p.pid) == t0  # a busy loop that gets no CPU at all
        leaf.thaw()
        assert leaf.wait_frozen(WAIT, frozen=False)
        assert not leaf.frozen
        t1 = cpu_ticks(p.pid)
        deadline = time.monotonic() + WAIT
        while cpu_ticks(p.pid) == t1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cpu_ticks(p.pid) > t1
    finally:
        p.kill()
        p.wait(timeout=WAIT)


def test_no_internal_process_rule_message(cgroup_base):
    mid = cgroup_base.child("mid").create()
    p = spawn_in(mid, "import time; time.sleep(600)")
    try:
        with pytest.raises(CgroupError) as e:
            mid.enable_controllers(["memory"])
        assert e.value.code == "busy"
        assert "no-internal-process rule" in e.value.message
    finally:
        p.kill()
        p.wait(timeout=WAIT)


def test_remove_tree(cgroup_base):
    a = cgroup_base.child("a").create()
    a.enable_controllers(["memory", "pids"])
    b = a.child("b").create()
    b.enable_controllers(["memory"])
    c = b.child("c").create()
    a.child("sibling").create()
    p = spawn_in(c, "import time; time.sleep(600)")
    with pytest.raises(CgroupError) as e:
        a.remove_tree(kill=False, timeout=1)
    assert e.value.code == "busy"
    assert c.populated
    a.remove_tree(kill=True, timeout=WAIT)
    assert p.wait(timeout=WAIT) == -9
    assert not a.path.exists()
    assert cgroup_base.children() == []
    a.remove_tree()  # already gone: no error

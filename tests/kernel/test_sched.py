"""agentcg's sched_ext scheduler on the real kernel: loading and unloading, weights
from cpu.weight, latency-class preemption, and what happens when it stops."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from agentcg.bpf import sched as scx
from agentcg.core.sched import CallSched, SchedClass, SchedConfig, knobs
from agentcg.devtools import cpuload
from agentcg.kernel.cgroup import Cgroup, find_cgroup2_mount

pytestmark = [pytest.mark.kernel, pytest.mark.requires("sched_ext")]

WEIGHTS = (100, 200, 300)
WINDOW_S = 20.0  # long enough that one late slice (emulation stalls) moves a share < 1 point


@pytest.fixture
def base() -> Iterator[Cgroup]:
    mount = find_cgroup2_mount()
    assert mount is not None
    top = Cgroup(mount)
    top.enable_controllers(["cpu"])
    cg = top.child(f"agentcg-sched-{secrets.token_hex(3)}").create()
    cg.enable_controllers(["cpu"])
    yield cg
    cg.remove_tree(kill=True, timeout=30)


@pytest.fixture
def scheduler() -> Iterator[scx.Scheduler]:
    assert not scx.kernel_state().ours, "a scheduler is already loaded"
    s = scx.Scheduler()
    s.load(knobs(SchedConfig()), switch_all=False, keep_maps=False)
    yield s
    s.unload()


def test_load_and_unload(base: Cgroup) -> None:
    before = scx.kernel_state()
    assert before.state == "disabled", before
    s = scx.Scheduler()
    s.load(knobs(SchedConfig()), switch_all=False, keep_maps=False)
    try:
        st = scx.kernel_state()
        assert (st.state, st.ops, st.switch_all) == ("enabled", "agentcg", False)
        assert s.link_path.exists()
        assert s.exit_info() is None
        # Only a task put on SCHED_EXT is the scheduler's; this process is not.
        w = cpuload.start(base.child("t").create(), cpuload.probe(20, 0.01), ext=True)
        assert scx.policy_of(w.pid) == scx.SCHED_EXT
        assert scx.policy_of(0) == 0
        w.result()
        assert sum(s.counters().values()) > 0
    finally:
        s.unload(keep_maps=True)
    st = scx.kernel_state()
    assert st.state == "disabled" and not st.ours
    ex = s.exit_info()
    assert ex is not None and ex.kind == "unregistered", ex
    s.unload()
    assert not any(s.pin_dir.iterdir())


def test_switch_all_takes_every_task() -> None:
    s = scx.Scheduler()
    s.load(knobs(SchedConfig()), switch_all=True, keep_maps=False)
    try:
        st = scx.kernel_state()
        assert st.ours and st.switch_all
        time.sleep(1)
        assert s.counters()["queued"] + s.counters()["direct"] > 0
    finally:
        s.unload()
    assert not scx.kernel_state().switch_all


def test_weights_share_one_cpu(scheduler: scx.Scheduler, base: Cgroup) -> None:
    cgs = {w: base.child(f"w{w}").create() for w in WEIGHTS}
    for w, cg in cgs.items():
        cg.set_cpu_weight(w)
    hogs = [cpuload.start(cg, cpuload.hog, ext=True, cpus={0}) for cg in cgs.values()]
    try:
        time.sleep(3)
        before = {w: cpuload.cpu_usage_us(cg) for w, cg in cgs.items()}
        time.sleep(WINDOW_S)
        after = {w: cpuload.cpu_usage_us(cg) for w, cg in cgs.items()}
    finally:
        for h in hogs:
            h.stop()
    shares = cpuload.shares(before, after)
    for w in WEIGHTS:
        assert abs(shares[w] - w / sum(WEIGHTS)) < 0.02, shares


def _wait_stopped(timeout_s: float = 20.0) -> None:
    """Until the kernel has disabled the scheduler (its exit callback has run)."""
    deadline = time.monotonic() + timeout_s
    while scx.kernel_state().state != "disabled":
        assert time.monotonic() < deadline, scx.kernel_state()
        time.sleep(0.1)


def _mean_wait_us(stats: dict[str, int] | None) -> float:
    assert stats is not None and stats["dispatches"] > 0, stats
    return stats["wait_us"] / stats["dispatches"]


def test_latency_class_preempts_batch_hogs(scheduler: scx.Scheduler, base: Cgroup) -> None:
    """A waking LATENCY task takes the CPU from low-priority hogs at once; the same
    task in the NORMAL class waits for a hog's slice to end."""
    waits = {}
    for klass in (SchedClass.NORMAL, SchedClass.LATENCY):
        lat, low = base.child(f"lat{klass}").create(), base.child(f"low{klass}").create()
        lat.set_cpu_weight(800)
        low.set_cpu_weight(25)
        scheduler.set_call(lat.cgroup_id, CallSched(klass, 2_000_000))
        scheduler.set_call(low.cgroup_id, CallSched(SchedClass.BATCH, 20_000_000))
        hogs = [cpuload.start(low, cpuload.hog, ext=True, cpus={0}) for _ in range(2)]
        try:
            probe = cpuload.start(lat, cpuload.probe(80, 0.005, delay_s=1.0), ext=True, cpus={0})
            probe.result()
        finally:
            for h in hogs:
                h.stop()
        stats = scheduler.call_stats(lat.cgroup_id)
        waits[klass] = _mean_wait_us(stats)
        assert stats is not None
        if klass is SchedClass.LATENCY:
            assert stats["preempts"] > stats["dispatches"] // 2, stats
        else:
            assert stats["preempts"] == 0, stats
    assert waits[SchedClass.LATENCY] < 0.5 * waits[SchedClass.NORMAL], waits


def test_scheduler_error_falls_back_to_fair(scheduler: scx.Scheduler, base: Cgroup) -> None:
    """Settings the scheduler rejects stop it with a scheduler error; its tasks keep
    running on the fair class, and the exit info says why."""
    cg = base.child("bad").create()
    hog = cpuload.start(cg, cpuload.hog, ext=True)
    try:
        time.sleep(1)
        scheduler.write_raw_settings(cg.cgroup_id, 9, 0)
        # The hog is always runnable: its next enqueue reads the settings.
        _wait_stopped()
        ex = scheduler.exit_info()
        assert ex is not None and ex.kind == "scheduler error", ex
        assert "class 9" in ex.message, ex
        assert scx.policy_of(hog.pid) == scx.SCHED_EXT  # the policy stays, the class is fair
        used = cpuload.cpu_usage_us(cg)
        time.sleep(2)
        assert cpuload.cpu_usage_us(cg) - used > 500_000  # still running, on the fair class
    finally:
        hog.stop()


def test_sysrq_unregisters_it(scheduler: scx.Scheduler) -> None:
    """sysrq-S, the kernel's kill switch for BPF schedulers, from outside."""
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("S")
    _wait_stopped()
    ex = scheduler.exit_info()
    assert ex is not None and ex.kind == "disabled by sysrq-S", ex

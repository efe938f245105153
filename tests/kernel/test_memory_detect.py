"""Memory trouble detection on the real kernel, both paths: the BPF probe
(bpf/memwatch.bpf.c via agentcg.bpf.memwatch) and its fallback (POLLPRI on
memory.events.local plus PSI triggers, agentcg.kernel.pollwatch)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentcg.bpf.events import EventKind, MemItem
from agentcg.bpf.memwatch import MemEvent, MemWatcher
from agentcg.kernel.cgroup import Cgroup
from agentcg.kernel.pollwatch import PollWatcher
from tests.kernel.cgroup_fixture import scratch_cgroup

pytestmark = pytest.mark.kernel

MiB = 1024**2
# Touch N MiB one MiB at a time once a line arrives on stdin, then wait for another.
TOUCH = (
    "import sys\n"
    "sys.stdin.readline()\n"
    "chunks = []\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    chunks.append(bytearray(1 << 20))\n"
    "    chunks[-1][::4096] = b'x' * 256\n"
    "print('done', flush=True)\n"
    "sys.stdin.readline()\n"
)


@pytest.fixture
def base() -> Iterator[Cgroup]:
    with scratch_cgroup() as cg:
        yield cg


def leaf(base: Cgroup, name: str, high: int, mmax: int) -> Cgroup:
    cg = base.child(name).create()
    cg.set_memory_high(high)
    cg.set_memory_max(mmax)
    cg.write("memory.oom.group", 1)
    return cg


# Touch N MiB, then go on replacing a MiB at a time: every new charge over memory.high
# meets the kernel's penalty again, so the call keeps stalling until it is killed.
CHURN = (
    "import sys\n"
    "sys.stdin.readline()\n"
    "chunks = []\n"
    "while True:\n"
    "    chunks.append(bytearray(1 << 20))\n"
    "    chunks[-1][::4096] = b'x' * 256\n"
    "    if len(chunks) > int(sys.argv[1]):\n"
    "        chunks.pop(0)\n"
)


def toucher(cg: Cgroup, mib: int, code: str = TOUCH) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(mib)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    cg.add_process(p.pid)
    return p


def go(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None
    p.stdin.write("\n")
    p.stdin.flush()


def run_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool], timeout: float) -> None:
    async def wait() -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    loop.run_until_complete(wait())


# --------------------------------------------------------------------------- BPF


@pytest.fixture(scope="module")
def memwatch() -> Iterator[tuple[MemWatcher, list[MemEvent], asyncio.AbstractEventLoop]]:
    # Compiling takes a long time under emulation: one probe for the module.
    loop = asyncio.new_event_loop()
    events: list[MemEvent] = []
    w = MemWatcher(events.append)
    w.load()
    w.start(loop)
    yield w, events, loop
    w.close()
    loop.close()


@pytest.mark.requires("bcc")
def test_probe_reports_futile_reclaim_and_oom_with_the_leaf_id(base, memwatch):
    w, events, loop = memwatch
    watched = leaf(base, "watched", 24 * MiB, 40 * MiB)
    quiet = leaf(base, "quiet", 24 * MiB, 40 * MiB)  # same trouble, not in the map
    w.watch(watched.cgroup_id)
    assert w.watched() == {watched.cgroup_id}
    p, q = toucher(watched, 80), toucher(quiet, 80)
    for x in (p, q):
        go(x)

    def reclaim_seen() -> bool:
        return any(e.kind is EventKind.MEM_RECLAIM for e in events)

    run_until(loop, reclaim_seen, 120)
    r = next(e for e in events if e.kind is EventKind.MEM_RECLAIM)
    assert r.cgroup_id == watched.cgroup_id
    assert r.high == 24 * MiB and r.max == 40 * MiB and r.usage > r.high
    assert r.nr_reclaimed < 32
    assert 0 < time.monotonic_ns() - r.ts_ns < 120e9
    high = [e for e in events if e.item is MemItem.HIGH]
    assert high and high[0].cgroup_id == watched.cgroup_id

    # What the daemon does: raise memory.high to memory.max; the call meets its OOM.
    watched.set_memory_high(None)
    quiet.set_memory_high(None)
    run_until(loop, lambda: p.poll() is not None and q.poll() is not None, 120)
    assert p.returncode == -9 and q.returncode == -9
    run_until(loop, lambda: any(e.kind is EventKind.MEM_OOM_VICTIM for e in events), 30)
    items = {e.item for e in events if e.kind is EventKind.MEM_EVENT}
    assert {MemItem.HIGH, MemItem.MAX, MemItem.OOM, MemItem.OOM_KILL} <= items
    victims = [e for e in events if e.kind is EventKind.MEM_OOM_VICTIM]
    assert [v.pid for v in victims] == [p.pid]
    assert {e.cgroup_id for e in events} == {watched.cgroup_id}, "the filter let others through"
    w.unwatch(watched.cgroup_id)
    assert w.watched() == set()


@pytest.mark.requires("bcc")
def test_probe_reports_freezes_completing(base, memwatch):
    w, events, loop = memwatch
    cg = leaf(base, "sleeper", 64 * MiB, 64 * MiB)
    w.watch(cg.cgroup_id)
    p = subprocess.Popen(["sleep", "60"])
    cg.add_process(p.pid)
    before = len(events)
    cg.freeze()
    run_until(loop, lambda: any(e.kind is EventKind.MEM_FROZEN for e in events[before:]), 30)
    cg.thaw()
    run_until(loop, lambda: sum(e.kind is EventKind.MEM_FROZEN for e in events[before:]) > 1, 30)
    frozen = [e for e in events[before:] if e.kind is EventKind.MEM_FROZEN]
    assert [(e.cgroup_id, e.frozen) for e in frozen] == [
        (cg.cgroup_id, True),
        (cg.cgroup_id, False),
    ]
    p.kill()
    p.wait()
    w.unwatch(cg.cgroup_id)


# --------------------------------------------------------------------------- fallback


def test_fallback_signals_memory_events_and_pressure(base):
    loop = asyncio.new_event_loop()
    w = PollWatcher(loop)
    # memory.max well above the toucher: it stays over memory.high (nothing to reclaim)
    # instead of dying at its max, and keeps charging anew there, so it stalls in every
    # window.
    cg = leaf(base, "polled", 24 * MiB, 256 * MiB)
    seen: list[tuple[str, float]] = []
    events_file, pressure = cg.path / "memory.events.local", cg.path / "memory.pressure"
    w.add_events(events_file, lambda path: seen.append((path.name, time.monotonic())))
    w.add_pressure(
        pressure, 20_000, 1_000_000, lambda path: seen.append((path.name, time.monotonic()))
    )
    assert w.paths() == {events_file, pressure}
    p = toucher(cg, 80, CHURN)
    go(p)

    def fired() -> int:
        return sum(n == "memory.pressure" for n, _ in seen)

    try:
        # Once per window while the stall lasts: the trigger's event must survive the
        # asyncio loop's own poll of our epoll (a trigger in a shared, nested epoll
        # never reached the callback).
        run_until(loop, lambda: fired() >= 3, 120)
        assert fired() >= 3, seen[-5:]
        names = {n for n, _ in seen}
        assert "memory.events.local" in names, seen[-5:]
        assert cg.read_keyed("memory.events.local")["high"] > 0
    finally:
        p.kill()
        p.wait()
    # Removing the cgroup destroys the trigger, which signals once more: the watcher
    # drops it rather than calling back or spinning. The event file stays until removed.
    cg.remove()
    run_until(loop, lambda: pressure not in w.paths(), 30)
    assert w.paths() == {events_file}
    w.remove(events_file)
    assert w.paths() == set()
    w.close()
    loop.close()


def test_an_unprivileged_window_is_refused_with_oserror(base):
    loop = asyncio.new_event_loop()
    w = PollWatcher(loop)
    cg = base.child("psi").create()
    with pytest.raises(OSError):
        w.add_pressure(cg.path / "memory.pressure", 20_000, 20_000_000, lambda _p: None)
    assert w.paths() == set()
    assert Path(cg.path / "memory.pressure").exists()
    w.close()
    loop.close()

"""agentcg's sched_ext scheduler from user space: load, unload, kernel state, exit
info, and the pinned maps (per-call settings in, per-call statistics out).

The object (agentcg/bpf/scx_agent.bpf.o, built from bpf/scx_agent.bpf.c by
scripts/build-bpf) is loaded with libbpf through ctypes. Its link and maps are pinned
under /sys/fs/bpf/agentcg/, so the scheduler does not depend on this process: a
daemon that dies leaves it running (the kernel's watchdog still ejects it if it ever
stalls a task), and whenever it stops, the kernel moves SCHED_EXT tasks back to the
fair class, where their cgroups' cpu.weight and cpu.max apply. The ctypes structures
mirror bpf/include/agentcg/sched.h (a host test compiles that header to compare).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from agentcg.bpf.libbpf import BpfObject, PinnedMap
from agentcg.core.errors import AgentcgError
from agentcg.core.sched import CallSched, SchedKnobs

NAME = "agentcg"  # AGENTCG_SCHED_NAME: what /sys/kernel/sched_ext/root/ops shows
SCHED_EXT = 7  # the SCHED_EXT scheduling policy
SYSFS = Path("/sys/kernel/sched_ext")
BPFFS = Path("/sys/fs/bpf")
PIN_DIR = BPFFS / "agentcg"
OBJECT = "scx_agent.bpf.o"
STRUCT_OPS = {False: "agentcg_ops", True: "agentcg_all"}  # by switch_all
STOP_TIMEOUT_S = 10.0  # how long unregistering may take (an RCU grace period and a kthread)
PINNED_MAPS = ("call_settings", "call_stats", "sched_stats", "exit_info")
STAT_NAMES = ("direct", "queued", "preempt", "settings")  # enum agentcg_sched_stat
EXIT_KINDS = {  # enum scx_exit_kind
    0: "none",
    1: "done",
    64: "unregistered",
    65: "unregistered by BPF",
    66: "unregistered by the kernel",
    67: "disabled by sysrq-S",
    1024: "error",
    1025: "scheduler error",
    1026: "runnable task stall (watchdog)",
}


class Settings(ctypes.Structure):  # struct agentcg_sched_settings
    _fields_ = (("klass", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("slice_ns", ctypes.c_uint64))


class Stats(ctypes.Structure):  # struct agentcg_sched_stats
    _fields_ = (
        ("run_ns", ctypes.c_uint64),
        ("wait_ns", ctypes.c_uint64),
        ("max_wait_ns", ctypes.c_uint64),
        ("dispatches", ctypes.c_uint64),
        ("preempts", ctypes.c_uint64),
    )


class Knobs(ctypes.Structure):  # struct agentcg_sched_knobs
    _fields_ = (
        ("slice_ns", ctypes.c_uint64),
        ("wake_credit_ns", ctypes.c_uint64),
        ("latency_credit_ns", ctypes.c_uint64),
    )


class ExitInfo(ctypes.Structure):  # struct agentcg_sched_exit
    _fields_ = (
        ("kind", ctypes.c_int64),
        ("exit_code", ctypes.c_int64),
        ("reason", ctypes.c_char * 128),
        ("msg", ctypes.c_char * 1024),
    )


@dataclass(frozen=True)
class KernelState:
    """/sys/kernel/sched_ext: "unsupported" when the kernel has no sched_ext."""

    state: str
    ops: str | None  # the registered scheduler's name
    switch_all: bool

    @property
    def ours(self) -> bool:
        return self.state == "enabled" and self.ops == NAME


@dataclass(frozen=True)
class Exit:
    kind: str
    code: int
    reason: str
    message: str

    def __str__(self) -> str:
        text = f"{self.kind}: {self.reason}" if self.reason else self.kind
        return f"{text} ({self.message})" if self.message else text


def _read(path: Path) -> str | None:
    """A small sysfs file (open, read, close: called on every call.attach)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096).decode().strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def kernel_state(sysfs: Path = SYSFS) -> KernelState:
    state = _read(sysfs / "state")
    if state is None:
        return KernelState("unsupported", None, False)
    ops = _read(sysfs / "root" / "ops") if state == "enabled" else None
    return KernelState(state, ops or None, _read(sysfs / "switch_all") == "1")


def foreign_scheduler(sysfs: Path = SYSFS) -> str | None:
    """The name of a loaded sched_ext scheduler that is not agentcg's, else None: one
    read (root/ops exists only while a scheduler is registered), for every attach."""
    ops = _read(sysfs / "root" / "ops")
    return ops if ops and ops != NAME else None


def object_path() -> Path:
    return Path(str(resources.files("agentcg.bpf").joinpath(OBJECT)))


def set_policy(pid: int) -> None:
    """Put a task on SCHED_EXT; its children inherit the policy."""
    try:
        os.sched_setscheduler(pid, SCHED_EXT, os.sched_param(0))
    except OSError as e:
        raise AgentcgError(
            "unavailable", f"cannot set SCHED_EXT on pid {pid}: {e.strerror}"
        ) from None


def policy_of(pid: int) -> int:
    return os.sched_getscheduler(pid)


def _mount_bpffs() -> None:
    """bpffs is where links and maps are pinned; systemd mounts it, a bare VM may not."""
    if os.path.ismount(BPFFS):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise AgentcgError(
            "unavailable",
            f"cannot mount bpffs at {BPFFS}: {os.strerror(err)}; mount it: "
            f"mount -t bpf bpf {BPFFS}",
        )


def _key(cgroup_id: int) -> ctypes.c_uint64:
    return ctypes.c_uint64(cgroup_id)


class Scheduler:
    """The loaded scheduler's pinned objects. Only one agentcg daemon per host loads it."""

    def __init__(self, pin_dir: Path = PIN_DIR, obj: Path | None = None) -> None:
        self.pin_dir = pin_dir
        self.obj = obj or object_path()
        self._maps: dict[str, PinnedMap] = {}

    @property
    def link_path(self) -> Path:
        return self.pin_dir / "link"

    def load(self, knobs: SchedKnobs, switch_all: bool, keep_maps: bool) -> None:
        """Register the scheduler; replaces one left pinned by a previous daemon.

        keep_maps: reuse the pinned maps (settings and statistics of running calls) of
        a scheduler that stopped; otherwise start from empty maps.
        """
        if not self.obj.exists():
            raise AgentcgError(
                "unavailable", f"no scheduler object at {self.obj}: run scripts/build-bpf"
            )
        _mount_bpffs()
        self.pin_dir.mkdir(mode=0o700, exist_ok=True)
        self.unload(keep_maps=keep_maps)
        with BpfObject(str(self.obj)) as o:
            o.set_initial_value(".rodata.knobs", Knobs(**vars(knobs)))
            o.set_autocreate(STRUCT_OPS[not switch_all], False)
            for name in PINNED_MAPS:
                o.set_pin_path(name, str(self.pin_dir / name))
            o.load()
            o.attach_and_pin(STRUCT_OPS[switch_all], str(self.link_path))
        self._open_maps()

    def _open_maps(self) -> None:
        self._close_maps()
        sizes = {
            "call_settings": (ctypes.sizeof(Settings), False),
            "call_stats": (ctypes.sizeof(Stats), False),
            "sched_stats": (8, True),
            "exit_info": (ctypes.sizeof(ExitInfo), False),
        }
        for name, (size, percpu) in sizes.items():
            self._maps[name] = PinnedMap(str(self.pin_dir / name), size, percpu)

    def _close_maps(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def unload(self, keep_maps: bool = False, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Unregister (unpinning the link drops its last reference; the kernel then
        disables the scheduler asynchronously, which we wait for) and, unless keep_maps,
        remove the pinned maps too. Safe when nothing is loaded."""
        try:
            self.link_path.unlink()
        except FileNotFoundError:
            pass
        else:
            deadline = time.monotonic() + timeout_s
            while (st := kernel_state()).ours or st.state == "disabling":
                if time.monotonic() > deadline:
                    raise AgentcgError(
                        "internal", f"the scheduler did not stop within {timeout_s:g} s"
                    )
                time.sleep(0.05)
        if not keep_maps:
            self._close_maps()
            for name in PINNED_MAPS:
                with contextlib.suppress(FileNotFoundError):
                    (self.pin_dir / name).unlink()

    def close(self) -> None:
        """Forget the map fds; what is pinned stays."""
        self._close_maps()

    def _map(self, name: str) -> PinnedMap:
        if name not in self._maps:
            if not (self.pin_dir / name).exists():
                raise AgentcgError("unavailable", "the agentcg scheduler is not loaded")
            self._open_maps()
        return self._maps[name]

    # ------------------------------------------------------------ per call

    def set_call(self, cgroup_id: int, sched: CallSched) -> None:
        """Settings for the call whose leaf has this id, and zeroed statistics."""
        self._map("call_settings").update(
            _key(cgroup_id), Settings(int(sched.klass), 0, sched.slice_ns)
        )
        self._map("call_stats").insert(_key(cgroup_id), Stats())

    def write_raw_settings(self, cgroup_id: int, klass: int, slice_ns: int) -> None:
        """Write settings unchecked (what a buggy writer could): the scheduler must
        reject them with a scheduler error. Used by the kernel tests."""
        self._map("call_settings").update(_key(cgroup_id), Settings(klass, 0, slice_ns))

    def call_stats(self, cgroup_id: int) -> dict[str, int] | None:
        raw = self._map("call_stats").lookup(_key(cgroup_id))
        if raw is None:
            return None
        s = Stats.from_buffer_copy(raw)
        return {
            "run_us": s.run_ns // 1000,
            "wait_us": s.wait_ns // 1000,
            "max_wait_us": s.max_wait_ns // 1000,
            "dispatches": s.dispatches,
            "preempts": s.preempts,
        }

    def forget_call(self, cgroup_id: int) -> None:
        for name in ("call_settings", "call_stats"):
            self._map(name).delete(_key(cgroup_id))

    # ------------------------------------------------------------ whole scheduler

    def counters(self) -> dict[str, int]:
        """The per-CPU counters of enum agentcg_sched_stat, summed over CPUs."""
        m = self._map("sched_stats")
        out = {}
        for i, name in enumerate(STAT_NAMES):
            raw = m.lookup(ctypes.c_uint32(i)) or b""
            out[name] = sum(v for (v,) in struct.iter_unpack("<Q", raw))
        return out

    def exit_info(self) -> Exit | None:
        """Why the scheduler stopped; None while it runs (or was never loaded)."""
        try:
            raw = self._map("exit_info").lookup(ctypes.c_uint32(0))
        except AgentcgError:
            return None
        if raw is None:
            return None
        e = ExitInfo.from_buffer_copy(raw)
        if e.kind == 0:
            return None
        return Exit(
            kind=EXIT_KINDS.get(e.kind, f"exit kind {e.kind}"),
            code=e.exit_code,
            reason=e.reason.decode(errors="replace"),
            message=e.msg.decode(errors="replace"),
        )

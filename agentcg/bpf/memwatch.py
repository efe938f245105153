"""Loader of bpf/memwatch.bpf.c: the daemon's in-kernel memory detector (bcc).

The probe reports memory trouble of the cgroups in its ``watched`` map (calls' leaves
and sessions, kept up to date by the daemon) through a ring buffer: reclaim that frees
nothing while over memory.high or at memory.max, memory.events items as the kernel
counts them, OOM victims, and freezes completing. See the C source for each event.

Compiling takes seconds (much longer under emulation), so ``load()`` is meant to run
once per daemon start on a worker thread; ``start(loop)`` then reads the ring buffer's
fd on the asyncio loop, and ``watch``/``unwatch`` update the map from the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentcg.bpf.events import EventKind, MemItem, MemWatch, RawMemEvent, decode
from agentcg.bpf.sources import load_bcc
from agentcg.core.errors import AgentcgError, ErrorCode
from agentcg.kernel.btf import BTF, BTFError, load_vmlinux

SOURCE = "memwatch.bpf.c"
MEMCG_EVENT_FUNC = "__memcg_memory_event"
# PAGE_COUNTER_MAX in bytes and above: the limit file says "max".
_UNLIMITED = 1 << 62

# (macro, struct, member path) of every kernel struct member the probe reads.
OFFSETS = (
    ("OFF_MEMCG_CGROUP", "mem_cgroup", "css.cgroup"),
    ("OFF_MEMCG_USAGE", "mem_cgroup", "memory.usage"),
    ("OFF_MEMCG_HIGH", "mem_cgroup", "memory.high"),
    ("OFF_MEMCG_MAX", "mem_cgroup", "memory.max"),
    ("OFF_CGROUP_KN", "cgroup", "kn"),
    ("OFF_KERNFS_NODE_ID", "kernfs_node", "id"),
    ("OFF_TASK_CGROUPS", "task_struct", "cgroups"),
    ("OFF_TASK_TGID", "task_struct", "tgid"),
    ("OFF_CSS_SET_DFL_CGRP", "css_set", "dfl_cgrp"),
)
# (macro, enumerator of the kernel's enum memcg_memory_event)
ENUMS = (
    ("KERNEL_MEMCG_HIGH", "MEMCG_HIGH"),
    ("KERNEL_MEMCG_MAX", "MEMCG_MAX"),
    ("KERNEL_MEMCG_OOM", "MEMCG_OOM"),
    ("KERNEL_MEMCG_OOM_KILL", "MEMCG_OOM_KILL"),
)


@dataclass(frozen=True)
class MemEvent:
    kind: EventKind  # one of the MEM_ kinds
    cgroup_id: int
    ts_ns: int  # CLOCK_MONOTONIC, comparable with time.monotonic_ns()
    item: MemItem | None  # MEM_EVENT: which counter
    frozen: bool | None  # MEM_FROZEN: frozen (True) or thawed (False)
    pid: int
    nr_reclaimed: int  # pages
    usage: int  # bytes
    high: int | None  # bytes; None: no limit
    max: int | None


def _limit(v: int) -> int | None:
    return None if v >= _UNLIMITED else v


def to_mem_event(raw: RawMemEvent) -> MemEvent:
    kind = EventKind(raw.hdr.kind)
    return MemEvent(
        kind=kind,
        cgroup_id=raw.hdr.cgroup_id,
        ts_ns=raw.hdr.ts_ns,
        item=MemItem(raw.item) if kind is EventKind.MEM_EVENT else None,
        frozen=bool(raw.item) if kind is EventKind.MEM_FROZEN else None,
        pid=raw.pid,
        nr_reclaimed=raw.nr_reclaimed,
        usage=raw.usage,
        high=_limit(raw.high),
        max=_limit(raw.max),
    )


def probe_defines(btf: BTF, page_size: int) -> list[str]:
    """The -D flags that tell the probe this kernel's struct offsets and enum values.

    AgentcgError (unavailable) naming what is missing when the kernel lacks one.
    """
    try:
        flags = [f"-D{m}={btf.member_offset(s, p)}" for m, s, p in OFFSETS]
        flags += [f"-D{m}={btf.enum_value(e)}" for m, e in ENUMS]
    except BTFError as e:
        raise AgentcgError(
            ErrorCode.UNAVAILABLE, f"memwatch cannot run on this kernel: {e}"
        ) from None
    return [*flags, f"-DPAGE_BYTES={page_size}ULL"]


class MemWatcher:
    """The loaded probe. ``on_event`` runs on the loop for every event, in order."""

    def __init__(self, on_event: Callable[[MemEvent], None]) -> None:
        self._on_event = on_event
        self._bpf: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self.dropped = 0  # records this mirror could not decode

    def load(self) -> None:
        """Compile, load and attach (blocking: seconds, minutes under emulation).

        AgentcgError (unavailable) with the reason when BPF cannot be used here.
        """
        try:
            defines = probe_defines(load_vmlinux(), resource.getpagesize())
        except (OSError, BTFError) as e:
            raise AgentcgError(
                ErrorCode.UNAVAILABLE, f"memwatch needs the kernel's BTF: {e}"
            ) from None
        bpf = load_bcc(SOURCE, "memwatch", defines)
        try:
            bpf.attach_kprobe(event=MEMCG_EVENT_FUNC.encode(), fn_name=b"on_memcg_event")
        except Exception as e:  # bcc raises bare Exception when attaching fails
            bpf.cleanup()
            raise AgentcgError(
                ErrorCode.UNAVAILABLE,
                f"memwatch cannot attach a kprobe to {MEMCG_EVENT_FUNC}: {e}; "
                "the kernel needs CONFIG_KPROBES",
            ) from None
        self._bpf = bpf

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read events on ``loop`` (after load(); on the loop's thread)."""
        if self._bpf is None:
            raise AgentcgError(ErrorCode.INTERNAL, "MemWatcher.start() before load()")
        ring = self._bpf[b"mem_events"]
        ring.open_ring_buffer(self._on_record)
        self._fd = ring.map_fd
        self._loop = loop
        loop.add_reader(self._fd, self._drain)

    def _drain(self) -> None:
        self._bpf.ring_buffer_consume()

    def _on_record(self, _ctx: Any, data: int, size: int) -> None:
        try:
            raw = decode(data, size)
        except ValueError:
            self.dropped += 1
            return
        if isinstance(raw, RawMemEvent):
            self._on_event(to_mem_event(raw))

    def watch(self, cgroup_id: int) -> None:
        table = self._bpf[b"watched"]
        table[ctypes.c_uint64(cgroup_id)] = MemWatch()

    def unwatch(self, cgroup_id: int) -> None:
        table = self._bpf[b"watched"]
        with contextlib.suppress(KeyError):
            del table[ctypes.c_uint64(cgroup_id)]

    def watched(self) -> set[int]:
        return {k.value for k in self._bpf[b"watched"]}

    def close(self) -> None:
        """Stop reading, detach and free the program; safe to call twice."""
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop, self._fd = None, -1
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

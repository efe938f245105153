"""ctypes mirror of bpf/include/agentcg/events.h, and decoding of ring buffer records.

Every struct here names its C counterpart (``c_name``) and its event kind; the kernel
test tests/kernel/test_event_layout.py checks each one field by field against the
layout clang builds from the header. To add an event: mirror its struct below and add
it to EVENT_TYPES.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum
from typing import ClassVar

COMM_LEN = 16  # AGENTCG_COMM_LEN


class EventKind(IntEnum):
    """enum agentcg_event_kind: member X is AGENTCG_EVENT_X."""

    EXEC = 1
    MEM_RECLAIM = 2
    MEM_EVENT = 3
    MEM_OOM_VICTIM = 4
    MEM_FROZEN = 5


class MemItem(IntEnum):
    """enum agentcg_mem_item: member X is AGENTCG_MEM_X."""

    HIGH = 1
    MAX = 2
    OOM = 3
    OOM_KILL = 4


class EventHeader(ctypes.Structure):
    c_name: ClassVar[str] = "agentcg_event_header"
    _fields_ = (
        ("kind", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("ts_ns", ctypes.c_uint64),
    )


class Event(ctypes.Structure):
    """Base of the event structs: each starts with ``hdr`` and names its kind."""

    c_name: ClassVar[str]
    kind: ClassVar[EventKind]
    hdr: EventHeader


class RawExecEvent(Event):
    c_name = "agentcg_exec_event"
    kind = EventKind.EXEC
    _fields_ = (
        ("hdr", EventHeader),
        ("pid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
    )


class RawMemEvent(Event):
    """One layout for the four MEM_ kinds; ``kind`` here is the first of them."""

    c_name = "agentcg_mem_event"
    kind = EventKind.MEM_RECLAIM
    _fields_ = (
        ("hdr", EventHeader),
        ("item", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("nr_reclaimed", ctypes.c_uint64),
        ("usage", ctypes.c_uint64),
        ("high", ctypes.c_uint64),
        ("max", ctypes.c_uint64),
    )


class MemWatch(ctypes.Structure):
    """Value of memwatch's ``watched`` map (not an event)."""

    c_name: ClassVar[str] = "agentcg_mem_watch"
    _fields_ = (("last_reclaim_ns", ctypes.c_uint64), ("last_event_ns", ctypes.c_uint64))


EVENT_TYPES: dict[int, type[Event]] = {
    EventKind.EXEC: RawExecEvent,
    EventKind.MEM_RECLAIM: RawMemEvent,
    EventKind.MEM_EVENT: RawMemEvent,
    EventKind.MEM_OOM_VICTIM: RawMemEvent,
    EventKind.MEM_FROZEN: RawMemEvent,
}


def decode(data: int, size: int) -> Event:
    """A copy of the event at address ``data`` (``size`` bytes, from a ring buffer).

    Raises ValueError naming the problem when the record is not an event this mirror
    knows, or its size is not its struct's.
    """
    if size < ctypes.sizeof(EventHeader):
        raise ValueError(f"a {size}-byte record is shorter than the event header")
    raw = ctypes.string_at(data, size)
    kind = EventHeader.from_buffer_copy(raw).kind
    event_type = EVENT_TYPES.get(kind)
    if event_type is None:
        raise ValueError(f"unknown event kind {kind}")
    if size != ctypes.sizeof(event_type):
        raise ValueError(
            f"a {event_type.kind.name} event is {ctypes.sizeof(event_type)} bytes, got {size}"
        )
    return event_type.from_buffer_copy(raw)

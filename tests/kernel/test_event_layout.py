"""The ctypes mirror (agentcg/bpf/events.py) matches bpf/include/agentcg/events.h as clang
lays it out: bcc compiles the header and builds a ctypes type for every struct from
clang's record layout (a map's Leaf), and enum values come back as map sizes."""

import ctypes
from typing import Any

import pytest

from agentcg.bpf.events import EVENT_TYPES, EventHeader, EventKind, MemItem, MemWatch
from agentcg.bpf.sources import include_dir

pytestmark = [pytest.mark.kernel, pytest.mark.requires("bcc")]

# Several kinds share one struct: each struct once, plus the map values.
MIRRORS: list[type[ctypes.Structure]] = [
    EventHeader,
    *dict.fromkeys(EVENT_TYPES.values()),
    MemWatch,
]


def layout(t: Any, base: int = 0, prefix: str = "") -> list[tuple[str, int, int]]:
    """(dotted name, offset, size) of every field, nested structs flattened."""
    out = []
    for name, ftype in t._fields_:
        field = getattr(t, name)
        out.append((prefix + name, base + field.offset, field.size))
        if isinstance(ftype, type) and issubclass(ftype, ctypes.Structure):
            out += layout(ftype, base + field.offset, f"{prefix}{name}.")
    return out


@pytest.fixture(scope="module")
def compiled():
    from bcc import BPF

    lines = ["#include <linux/types.h>", "#include <agentcg/events.h>"]
    lines += [f"BPF_ARRAY(layout_{i}, struct {t.c_name}, 1);" for i, t in enumerate(MIRRORS)]
    lines += [f"BPF_ARRAY(kind_{k.name}, u8, AGENTCG_EVENT_{k.name});" for k in EventKind]
    lines += [f"BPF_ARRAY(item_{i.name}, u8, AGENTCG_MEM_{i.name});" for i in MemItem]
    b = BPF(text="\n".join(lines).encode(), cflags=[f"-I{include_dir()}"])
    yield b
    b.cleanup()


@pytest.mark.parametrize("index", range(len(MIRRORS)), ids=[t.c_name for t in MIRRORS])
def test_mirror_matches_the_c_struct(compiled, index):
    mirror = MIRRORS[index]
    leaf = compiled[f"layout_{index}".encode()].Leaf
    assert layout(mirror) == layout(leaf), f"struct {mirror.c_name} and its mirror differ"
    assert ctypes.sizeof(mirror) == ctypes.sizeof(leaf)


def test_every_event_starts_with_the_header():
    for kind, t in EVENT_TYPES.items():
        assert t._fields_[0] == ("hdr", EventHeader), t.c_name
        assert EVENT_TYPES[t.kind] is t, kind


def test_event_kinds_match_the_c_enum(compiled):
    for kind in EventKind:
        assert compiled[f"kind_{kind.name}".encode()].max_entries == kind.value, kind.name


def test_memory_items_match_the_c_enum(compiled):
    for item in MemItem:
        assert compiled[f"item_{item.name}".encode()].max_entries == item.value, item.name


def test_a_drifted_mirror_is_caught(compiled):
    # The check must be able to fail: the exec event without the header's padding.
    class Drifted(ctypes.Structure):
        _fields_ = (
            ("kind", ctypes.c_uint32),
            ("cgroup_id", ctypes.c_uint64),
            ("ts_ns", ctypes.c_uint64),
        )

    leaf = compiled[b"layout_0"].Leaf
    assert layout(Drifted) != layout(leaf)

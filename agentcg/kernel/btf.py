"""Minimal reader for kernel BTF (/sys/kernel/btf/vmlinux).

Only what capability checks need: which structs (with member names), unions and
functions (including kfuncs) the running kernel has. Reading the raw blob takes well
under a second, where `bpftool btf dump` of the whole kernel takes many seconds.
Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F
_KIND_STRUCT = 4
_KIND_UNION = 5
_KIND_FUNC = 12

# Bytes that follow the 12-byte struct btf_type for each kind: (fixed, per vlen entry).
_EXTRA = {
    1: (4, 0),  # INT
    2: (0, 0),  # PTR
    3: (12, 0),  # ARRAY
    4: (0, 12),  # STRUCT: btf_member[vlen]
    5: (0, 12),  # UNION
    6: (0, 8),  # ENUM: btf_enum[vlen]
    7: (0, 0),  # FWD
    8: (0, 0),  # TYPEDEF
    9: (0, 0),  # VOLATILE
    10: (0, 0),  # CONST
    11: (0, 0),  # RESTRICT
    12: (0, 0),  # FUNC (vlen is the linkage)
    13: (0, 8),  # FUNC_PROTO: btf_param[vlen]
    14: (4, 0),  # VAR
    15: (0, 12),  # DATASEC: btf_var_secinfo[vlen]
    16: (0, 0),  # FLOAT
    17: (4, 0),  # DECL_TAG
    18: (0, 0),  # TYPE_TAG
    19: (0, 12),  # ENUM64: btf_enum64[vlen]
}


class BTFError(ValueError):
    """The blob is not BTF this reader understands."""


@dataclass
class BTF:
    """Names found in one BTF blob. Struct/union members are decoded lazily."""

    data: bytes
    strings: bytes
    types: bytes
    structs: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, vlen)
    funcs: set[str] = field(default_factory=set)

    def has_struct(self, name: str) -> bool:
        return name in self.structs

    def has_func(self, name: str) -> bool:
        return name in self.funcs

    def members(self, struct_name: str) -> list[str]:
        """Member names of a struct or union; [] if absent. Anonymous members are ''."""
        loc = self.structs.get(struct_name)
        if loc is None:
            return []
        off, vlen = loc
        return [
            self.name_at(struct.unpack_from("<I", self.types, off + 12 + 12 * i)[0])
            for i in range(vlen)
        ]

    def has_member(self, struct_name: str, member: str) -> bool:
        return member in self.members(struct_name)

    def name_at(self, off: int) -> str:
        end = self.strings.find(b"\0", off)
        return self.strings[off : end if end >= 0 else None].decode(errors="replace")


def parse_btf(data: bytes) -> BTF:
    """Parse a BTF blob (little-endian, as on x86-64 and arm64)."""
    if len(data) < 24:
        raise BTFError("too short for a BTF header")
    magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        raise BTFError(f"bad magic {magic:#x} (big-endian BTF is not supported)")
    if version != 1:
        raise BTFError(f"unsupported BTF version {version}")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    # Section offsets count from the end of the header, whose length can grow.
    types = data[hdr_len + type_off : hdr_len + type_off + type_len]
    strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
    if len(types) != type_len or len(strings) != str_len:
        raise BTFError("truncated BTF sections")
    btf = BTF(data=data, strings=strings, types=types)
    unpack = struct.Struct("<II").unpack_from
    off = 0
    while off < type_len:
        name_off, info = unpack(types, off)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        extra = _EXTRA.get(kind)
        if extra is None:
            raise BTFError(f"unknown BTF kind {kind} at type offset {off}")
        if name_off:
            if kind in (_KIND_STRUCT, _KIND_UNION):
                btf.structs.setdefault(btf.name_at(name_off), (off, vlen))
            elif kind == _KIND_FUNC:
                btf.funcs.add(btf.name_at(name_off))
        off += 12 + extra[0] + extra[1] * vlen
    return btf


def load_vmlinux(path: Path = VMLINUX) -> BTF:
    return parse_btf(path.read_bytes())

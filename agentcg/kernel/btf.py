"""Minimal reader for kernel BTF (/sys/kernel/btf/vmlinux).

Only what capability checks and the bcc probes need: which structs (with member names
and byte offsets), unions, enum values and functions (including kfuncs) the running
kernel has. Reading the raw blob takes well under a second, where `bpftool btf dump`
of the whole kernel takes many seconds.
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
_KIND_ENUM = 6
_KIND_FUNC = 12
_KIND_ENUM64 = 19
# Kinds that only qualify or rename another type: typedef, volatile, const, restrict,
# type_tag.
_KIND_ALIASES = frozenset({8, 9, 10, 11, 18})

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
    type_offsets: list[int] = field(default_factory=list)  # type id - 1 -> offset in types
    _enums: dict[str, int] | None = None  # enumerator name -> value, built on first use

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

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a (dotted, possibly nested) member, e.g.
        member_offset("mem_cgroup", "memory.usage"). Members of anonymous structs and
        unions are found as if they were direct members. BTFError if there is none."""
        loc = self.structs.get(struct_name)
        if loc is None:
            raise BTFError(f"no struct {struct_name} in this kernel's BTF")
        total, off = 0, loc[0]
        for part in path.split("."):
            found = self._find_member(off, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path} in this kernel's BTF")
            bits, type_id = found
            total += bits // 8
            off = self._resolve(type_id)
        return total

    def _find_member(self, off: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of member `name` of the struct/union at `off`."""
        info = struct.unpack_from("<I", self.types, off + 4)[0]
        if (info >> 24) & 0x1F not in (_KIND_STRUCT, _KIND_UNION):
            return None
        bitfields = bool(info >> 31)
        for i in range(info & 0xFFFF):
            name_off, type_id, bits = struct.unpack_from("<III", self.types, off + 12 + 12 * i)
            if bitfields:
                bits &= 0xFFFFFF
            if name_off and self.name_at(name_off) == name:
                return bits, type_id
            if not name_off:  # anonymous struct or union: look inside
                inner = self._find_member(self._resolve(type_id), name)
                if inner is not None:
                    return bits + inner[0], inner[1]
        return None

    def _resolve(self, type_id: int) -> int:
        """Offset of the type behind typedefs and qualifiers."""
        for _ in range(32):
            if not 0 < type_id <= len(self.type_offsets):
                raise BTFError(f"BTF type id {type_id} out of range")
            off = self.type_offsets[type_id - 1]
            info, type_id = struct.unpack_from("<II", self.types, off + 4)
            if (info >> 24) & 0x1F not in _KIND_ALIASES:
                return off
        raise BTFError("BTF typedef chain too long")

    def enum_value(self, name: str) -> int:
        """Value of an enumerator (e.g. "MEMCG_HIGH"); BTFError if the kernel has none."""
        if self._enums is None:
            self._enums = {}
            for off in self.type_offsets:
                info = struct.unpack_from("<I", self.types, off + 4)[0]
                kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
                if kind == _KIND_ENUM:
                    for i in range(vlen):
                        n, v = struct.unpack_from("<Ii", self.types, off + 12 + 8 * i)
                        self._enums.setdefault(self.name_at(n), v)
                elif kind == _KIND_ENUM64:
                    for i in range(vlen):
                        n, lo, hi = struct.unpack_from("<III", self.types, off + 12 + 12 * i)
                        self._enums.setdefault(self.name_at(n), lo | hi << 32)
        if name not in self._enums:
            raise BTFError(f"no enumerator {name} in this kernel's BTF")
        return self._enums[name]

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
        btf.type_offsets.append(off)
        if name_off:
            if kind in (_KIND_STRUCT, _KIND_UNION):
                btf.structs.setdefault(btf.name_at(name_off), (off, vlen))
            elif kind == _KIND_FUNC:
                btf.funcs.add(btf.name_at(name_off))
        off += 12 + extra[0] + extra[1] * vlen
    return btf


def load_vmlinux(path: Path = VMLINUX) -> BTF:
    return parse_btf(path.read_bytes())

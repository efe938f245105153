"""The ctypes mirror in agentcg.bpf.sched matches bpf/include/agentcg/sched.h: a C
program compiled from the header prints every size, offset and enum value."""

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from agentcg.bpf import sched
from agentcg.core.sched import SchedClass

ROOT = Path(__file__).resolve().parents[2]
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang-19")
pytestmark = pytest.mark.skipif(CC is None, reason="needs a C compiler (cc)")

STRUCTS = {
    "agentcg_sched_settings": sched.Settings,
    "agentcg_sched_stats": sched.Stats,
    "agentcg_sched_knobs": sched.Knobs,
    "agentcg_sched_exit": sched.ExitInfo,
}
ENUMS = {
    **{f"AGENTCG_CLASS_{c.name}": c.value for c in SchedClass},
    "AGENTCG_NR_CLASSES": len(SchedClass),
    **{f"AGENTCG_STAT_{n.upper()}": i for i, n in enumerate(sched.STAT_NAMES)},
    "AGENTCG_NR_STATS": len(sched.STAT_NAMES),
}


def _c_layout(tmp_path: Path) -> dict[str, str]:
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "agentcg/sched.h"',
             "int main(void) {"]  # fmt: skip
    for cname, cls in STRUCTS.items():
        lines.append(f'printf("{cname} %zu\\n", sizeof(struct {cname}));')
        for field, _ in cls._fields_:
            lines.append(
                f'printf("{cname}.{field} %zu %zu\\n", offsetof(struct {cname}, {field}), '
                f"sizeof(((struct {cname} *)0)->{field}));"
            )
    for name in ENUMS:
        lines.append(f'printf("{name} %d\\n", (int){name});')
    lines.append('printf("NAME %s\\n", AGENTCG_SCHED_NAME);')
    lines.append("return 0; }")
    src, exe = tmp_path / "abi.c", tmp_path / "abi"
    src.write_text("\n".join(lines))
    assert CC is not None
    subprocess.run([CC, "-I", str(ROOT / "bpf/include"), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_mirror_matches_header(tmp_path: Path) -> None:
    c = _c_layout(tmp_path)
    for cname, cls in STRUCTS.items():
        assert int(c[cname]) == ctypes.sizeof(cls), cname
        for field, _ in cls._fields_:
            desc = getattr(cls, field)
            assert c[f"{cname}.{field}"] == f"{desc.offset} {desc.size}", f"{cname}.{field}"
    for name, value in ENUMS.items():
        assert int(c[name]) == value, name
    assert c["NAME"] == sched.NAME

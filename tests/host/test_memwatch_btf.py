"""The memwatch probe's kernel facts from BTF: member offsets and enum values."""

from __future__ import annotations

import pytest

from agentcg.bpf.memwatch import ENUMS, OFFSETS, probe_defines
from agentcg.core.errors import AgentcgError
from agentcg.kernel import btf as btfmod

needs_btf = pytest.mark.skipif(not btfmod.VMLINUX.exists(), reason="kernel without BTF")


@needs_btf
def test_offsets_and_enums_of_this_kernel():
    b = btfmod.load_vmlinux()
    assert b.member_offset("list_head", "next") == 0
    assert b.member_offset("list_head", "prev") == 8
    # nested: memory.usage is the first member of the page counter inside mem_cgroup
    assert b.member_offset("mem_cgroup", "memory.usage") == b.member_offset("mem_cgroup", "memory")
    assert b.member_offset("mem_cgroup", "memory.high") > b.member_offset("mem_cgroup", "memory")
    assert b.enum_value("MEMCG_LOW") == 0 and b.enum_value("MEMCG_HIGH") == 1
    flags = probe_defines(b, 4096)
    assert len(flags) == len(OFFSETS) + len(ENUMS) + 1
    assert "-DPAGE_BYTES=4096ULL" in flags
    assert all(f.startswith("-D") and "=" in f for f in flags)


@needs_btf
def test_a_missing_member_says_so():
    b = btfmod.load_vmlinux()
    with pytest.raises(btfmod.BTFError, match=r"has no member memory\.nothing"):
        b.member_offset("mem_cgroup", "memory.nothing")
    with pytest.raises(btfmod.BTFError, match="no enumerator"):
        b.enum_value("AGENTCG_NOT_AN_ENUMERATOR")
    with pytest.raises(btfmod.BTFError, match="no struct"):
        b.member_offset("agentcg_no_such_struct", "x")


def test_a_kernel_without_the_members_is_unavailable():
    empty = btfmod.BTF(data=b"", strings=b"\0", types=b"")
    with pytest.raises(AgentcgError) as e:
        probe_defines(empty, 4096)
    assert e.value.code == "unavailable" and "memwatch cannot run on this kernel" in e.value.message

"""agentcg.cli.doctor (its check domains and the report) and agentcg.kernel.btf logic.
Cgroup trees here are plain tmp dirs: the checks only read files and mkdir/rmdir, which a
regular filesystem serves the same way."""

import json
import socket
import struct
from pathlib import Path

import pytest

from agentcg.cli.doctor.base import Check
from agentcg.cli.doctor.bpf import parse_bpftool_version, parse_clang_version
from agentcg.cli.doctor.cgroups import cgroup_checks
from agentcg.cli.doctor.docker import docker_check
from agentcg.cli.doctor.report import FEATURES, Report, render, run_checks
from agentcg.kernel import btf as btfmod

# ---------------------------------------------------------------- BTF


def _btf_blob() -> bytes:
    strings = b"\0int\0pair\0a\0b\0f\0"
    off = {s: strings.index(b"\0" + s.encode() + b"\0") + 1 for s in ("int", "pair", "a", "b", "f")}

    def t(name: int, kind: int, vlen: int, size_or_type: int) -> bytes:
        return struct.pack("<III", name, (kind << 24) | vlen, size_or_type)

    types = (
        t(off["int"], 1, 0, 4)
        + struct.pack("<I", 32)  # [1] INT
        + t(off["pair"], 4, 2, 8)  # [2] STRUCT pair { int a; int b; }
        + struct.pack("<III", off["a"], 1, 0)
        + struct.pack("<III", off["b"], 1, 32)
        + t(0, 13, 1, 1)
        + struct.pack("<II", 0, 1)  # [3] FUNC_PROTO int (int)
        + t(off["f"], 12, 1, 3)  # [4] FUNC f
        + t(0, 19, 1, 8)
        + struct.pack("<III", off["a"], 1, 0)  # [5] ENUM64
    )
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_btf_parser_synthetic():
    b = btfmod.parse_btf(_btf_blob())
    assert b.has_struct("pair") and b.members("pair") == ["a", "b"]
    assert b.has_member("pair", "b") and not b.has_member("pair", "c")
    assert b.has_func("f") and not b.has_func("pair")
    assert b.members("nope") == []


def test_btf_parser_rejects_garbage():
    with pytest.raises(btfmod.BTFError):
        btfmod.parse_btf(b"\0" * 32)
    blob = bytearray(_btf_blob())
    blob[24 + 7] = 31  # top byte of the first type's info word: kind 31 is unknown
    with pytest.raises(btfmod.BTFError, match="unknown BTF kind"):
        btfmod.parse_btf(bytes(blob))


@pytest.mark.skipif(not btfmod.VMLINUX.exists(), reason="kernel without BTF")
def test_btf_parser_on_this_kernel():
    b = btfmod.load_vmlinux()
    assert {"pid", "comm", "real_parent"} <= set(b.members("task_struct"))
    assert b.has_func("bpf_get_current_cgroup_id")
    assert b.has_struct("cgroup")


# ---------------------------------------------------------------- cgroup checks


def _fake_cgroup2(root: Path, controllers: str, subtree: str = "", procs: str = "") -> None:
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text(subtree + "\n")
    (root / "cgroup.procs").write_text(procs)


def _mountinfo(cg2: Path, v1: dict[str, str]) -> str:
    lines = [f"41 31 0:38 / {cg2} rw,relatime - cgroup2 cgroup2 rw"]
    for i, (ctrl, point) in enumerate(v1.items()):
        lines.append(f"{50 + i} 31 0:{60 + i} / {point} rw - cgroup cgroup rw,{ctrl}")
    return "\n".join(lines) + "\n"


def test_hybrid_host_reports_v1_binding_and_never_probes(tmp_path):
    cg2 = tmp_path / "unified"
    _fake_cgroup2(cg2, "hugetlb")
    mi = _mountinfo(cg2, {"memory": "/sys/fs/cgroup/memory", "cpu": "/c", "blkio": "/b"})
    checks, ok, mount = cgroup_checks(mi, None, probe=True)
    assert not ok and mount == cg2
    ctrl = next(c for c in checks if c.name == "cgroup2 controllers")
    assert ctrl.status == "fail"
    assert "memory, cpu, io are bound to cgroup v1" in ctrl.fact
    assert "cannot enforce memory/cpu/io limits" in ctrl.fact
    assert "pids (not built into this kernel" in ctrl.fact
    deleg = next(c for c in checks if c.name == "delegated subtree")
    assert deleg.status == "fail" and "not attempted" in deleg.fact
    assert [p.name for p in cg2.iterdir() if p.is_dir()] == []


def test_v2_host_probe_creates_and_removes(tmp_path):
    _fake_cgroup2(tmp_path, "cpuset cpu io memory pids", subtree="cpu memory pids")
    checks, ok, _ = cgroup_checks(_mountinfo(tmp_path, {}), None, probe=True)
    assert ok
    deleg = checks[-1]
    assert deleg.status == "ok" and "created and removed" in deleg.fact
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_namespace_root_with_processes_cannot_delegate(tmp_path):
    # A container's cgroup-namespace root: not the real root (has cgroup.type), has processes.
    _fake_cgroup2(tmp_path, "cpu memory pids", procs="1\n7\n")
    (tmp_path / "cgroup.type").write_text("domain\n")
    checks, ok, _ = cgroup_checks(_mountinfo(tmp_path, {}), None, probe=False)
    assert not ok
    assert "no-internal-process rule" in checks[-1].fact


def test_root_outside_mount_is_rejected(tmp_path):
    _fake_cgroup2(tmp_path, "cpu memory pids")
    checks, ok, _ = cgroup_checks(_mountinfo(tmp_path, {}), Path("/elsewhere/agentcg"), True)
    assert not ok and "not under the cgroup2 mount" in checks[-1].fact


def test_no_cgroup2_at_all():
    checks, ok, mount = cgroup_checks("22 1 0:21 / / rw - ext4 /dev/vda rw\n", None, True)
    assert (ok, mount) == (False, None) and checks[0].status == "fail"


# ---------------------------------------------------------------- verdict, output


def _report(**off: bool) -> Report:
    feats = dict.fromkeys(FEATURES, True)
    feats.update(off)
    return Report([Check("x", "ok", "fact", "src", ("cgroups",))], feats)


def test_verdicts_and_exit_codes():
    assert (_report().exit_code, _report().verdict) == (0, "ok")
    r = _report(docker=False, memcg_bpf_ops=False)
    assert (r.exit_code, r.verdict) == (1, "degraded")
    assert r.features_off == ["memcg_bpf_ops", "docker"]
    assert "memcg_bpf_ops (in-kernel memory policy" in render(r)
    assert _report(cgroups=False).exit_code == 2


def test_json_shape():
    d = _report(bcc=False).to_dict()
    assert d["verdict"] == "degraded" and d["exit_code"] == 1
    assert d["checks"] == [
        {"name": "x", "status": "ok", "fact": "fact", "source": "src", "gates": ["cgroups"]}
    ]
    assert d["features"]["bcc"] is False
    json.dumps(d)


def test_version_parsers():
    out = "bpftool v7.5.0\nusing libbpf v1.5\nfeatures: llvm, skeletons\n"
    assert parse_bpftool_version(out) == ("7.5.0", "1.5")
    assert parse_bpftool_version("") == (None, None)
    clang = "Debian clang version 19.1.7 (3~deb12u1)\nTarget: x86_64-pc-linux-gnu\n"
    assert parse_clang_version(clang) == "19.1.7"


def test_docker_socket(tmp_path):
    path = tmp_path / "docker.sock"
    assert docker_check((path,)).status == "warn"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(str(path))
        srv.listen(1)
        assert docker_check((path,)).status == "ok"
    finally:
        srv.close()


def test_run_checks_on_this_host_is_read_only_and_serialisable():
    # probe=False: never mkdir on the machine that runs the host tests.
    report = run_checks(probe=False)
    assert set(report.features) == set(FEATURES)
    assert report.exit_code in (0, 1, 2)
    assert report.checks[0].name == "cgroup2 mount"
    json.dumps(report.to_dict())

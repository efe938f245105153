"""BPF: bpffs, the kernel's BTF and the memcg BPF interfaces it declares, bcc, and the
toolchain that builds our BPF objects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from agentcg.cli.doctor.base import OK, WARN, Check, Findings, Host

MEMCG_KFUNCS = (
    "bpf_get_mem_cgroup",
    "bpf_put_mem_cgroup",
    "bpf_mem_cgroup_usage",
    "bpf_mem_cgroup_page_state",
    "bpf_mem_cgroup_vm_events",
    "bpf_mem_cgroup_flush_stats",
)


def collect(host: Host) -> Findings:
    checks = [bpffs_check(host.mounts)]
    features = {"bpffs": checks[-1].status == OK}
    bchecks, bfeats = btf_checks(host)
    checks += bchecks
    features.update(bfeats)
    for check in (bcc_check(), toolchain_check()):
        checks.append(check)
        features[check.gates[0]] = check.status == OK
    return checks, features


def bpffs_check(mounts_text: str) -> Check:
    points = [str(m) for m in _fs_mounts(mounts_text, "bpf")]
    if points:
        return Check(
            "bpffs",
            OK,
            f"bpf filesystem mounted at {', '.join(points)}",
            "read /proc/mounts",
            ("bpffs",),
        )
    return Check(
        "bpffs",
        WARN,
        "bpf filesystem not mounted; mount -t bpf bpf /sys/fs/bpf",
        "read /proc/mounts",
        ("bpffs",),
    )


def _fs_mounts(mounts_text: str, fstype: str) -> list[Path]:
    out = []
    for line in mounts_text.splitlines():
        f = line.split()
        if len(f) >= 3 and f[2] == fstype:
            out.append(Path(f[1]))
    return out


def btf_checks(host: Host) -> Findings:
    """The BTF itself, then the memcg struct_ops and kfuncs it declares. When it is
    unusable, one warning gates everything that depends on it (sched_ext included)."""
    feats = dict.fromkeys(("btf", "memcg_bpf_ops", "bpf_oom_ops", "memcg_kfuncs"), False)
    src = f"parsed {host.btf_path}"
    b = host.btf.btf
    if b is None:
        return [
            Check(
                "BTF",
                WARN,
                f"{host.btf_path} unusable: {host.btf.why}",
                src,
                ("btf", "sched_ext", "memcg_bpf_ops", "memcg_kfuncs"),
            )
        ], feats
    feats["btf"] = True
    checks = [
        Check(
            "BTF",
            OK,
            f"{host.btf_path}: {len(b.structs)} structs/unions, {len(b.funcs)} functions",
            src,
            ("btf",),
        )
    ]
    for struct_name, feature in (
        ("memcg_bpf_ops", "memcg_bpf_ops"),
        ("bpf_oom_ops", "bpf_oom_ops"),
    ):
        present = b.has_struct(struct_name)
        feats[feature] = present
        checks.append(
            Check(
                struct_name,
                OK if present else WARN,
                f"struct {struct_name} in BTF"
                if present
                else f"no struct {struct_name} in BTF (unmerged upstream series); memory policy "
                "falls back to memory.high/max written from user space",
                src,
                (feature,),
            )
        )
    found = [k for k in MEMCG_KFUNCS if b.has_func(k)]
    needed = ("bpf_get_mem_cgroup", "bpf_mem_cgroup_usage")
    feats["memcg_kfuncs"] = all(k in found for k in needed)
    checks.append(
        Check(
            "memcg kfuncs",
            OK if feats["memcg_kfuncs"] else WARN,
            f"present: {', '.join(found) or 'none'}; needed: {', '.join(needed)}",
            src,
            ("memcg_kfuncs",),
        )
    )
    return checks, feats


def bcc_check() -> Check:
    release = os.uname().release
    build = Path(f"/lib/modules/{release}/build")
    gates = ("bcc",)
    try:
        import bcc  # importing proves libbcc.so loads
    except Exception as e:  # bcc raises assorted errors when libbcc is broken
        return Check(
            "bcc",
            WARN,
            f"python bcc not importable ({e}); install python3-bpfcc",
            "import bcc",
            gates,
        )
    if not build.exists():
        return Check(
            "bcc",
            WARN,
            f"bcc importable but no kernel headers at {build} (install linux-headers-{release})",
            f"import bcc; stat {build}",
            gates,
        )
    return Check(
        "bcc",
        OK,
        f"bcc {getattr(bcc, '__version__', '?')}; headers at {build.resolve()}",
        f"import bcc; stat {build}",
        gates,
    )


def _run(argv: list[str]) -> str | None:
    try:
        # Generous: clang loads all of libLLVM, which takes seconds under emulation.
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def parse_bpftool_version(text: str) -> tuple[str | None, str | None]:
    """(bpftool version, libbpf version) from `bpftool version` output."""
    tool = re.search(r"bpftool v?(\d+(?:\.\d+)+)", text)
    lib = re.search(r"libbpf v?(\d+(?:\.\d+)+)", text)
    return (tool.group(1) if tool else None, lib.group(1) if lib else None)


def parse_clang_version(text: str) -> str | None:
    m = re.search(r"clang version (\d+(?:\.\d+)+)", text)
    return m.group(1) if m else None


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def toolchain_check() -> Check:
    facts, sources = [], []
    bpftool_out = _run(["bpftool", "version"]) if shutil.which("bpftool") else None
    sources.append("ran bpftool version")
    tool_v, lib_v = parse_bpftool_version(bpftool_out or "")
    facts.append(f"bpftool {tool_v or 'missing'} (libbpf {lib_v or '?'})")
    clang_v = None
    for clang in ("clang-19", "clang"):
        if shutil.which(clang):
            clang_v = parse_clang_version(_run([clang, "--version"]) or "")
            sources.append(f"ran {clang} --version")
            facts.append(f"{clang} {clang_v or '?'}")
            break
    else:
        facts.append("clang missing")
    pc = _run(["pkg-config", "--modversion", "libbpf"]) if shutil.which("pkg-config") else None
    sources.append("ran pkg-config --modversion libbpf")
    sys_lib = pc.strip() if pc else None
    facts.append(f"system libbpf {sys_lib or 'not found'}")
    # .struct_ops.link sections need libbpf >= 1.4 in whichever loader is used.
    libbpf_ok = any(v and _version_tuple(v) >= (1, 4) for v in (lib_v, sys_lib))
    ok = bool(tool_v and clang_v and libbpf_ok)
    if not ok:
        facts.append("need clang, bpftool and libbpf >= 1.4 (scripts/setup.sh installs them)")
    return Check(
        "BPF toolchain",
        OK if ok else WARN,
        "; ".join(facts),
        "; ".join(sources),
        ("bpf_toolchain",),
    )

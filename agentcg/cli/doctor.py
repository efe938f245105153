"""`agentcg doctor`: what this host offers agentcg, how each fact was found, what it gates.

Read-only except for one probe: when cgroup2 has the memory controller, a uniquely
named empty cgroup is created and removed next to the configured root to prove that we
may create the daemon's subtree. Nothing is ever written on a cgroup v1 or hybrid
host's hierarchies; those are only described.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from agentcg.kernel import btf as btfmod
from agentcg.kernel.cgroup import (
    MOUNTINFO,
    Cgroup,
    CgroupError,
    find_cgroup2_mount,
    parse_pressure,
    v1_controllers,
)

OK, WARN, FAIL = "ok", "warn", "fail"
WANTED_CONTROLLERS = ("memory", "cpu", "pids", "io")
# cgroup v1 names of the v2 controllers that were renamed.
V1_NAMES = {"io": "blkio"}
MEMCG_KFUNCS = (
    "bpf_get_mem_cgroup",
    "bpf_put_mem_cgroup",
    "bpf_mem_cgroup_usage",
    "bpf_mem_cgroup_page_state",
    "bpf_mem_cgroup_vm_events",
    "bpf_mem_cgroup_flush_stats",
)
DOCKER_SOCKETS = (Path("/run/docker.sock"), Path("/var/run/docker.sock"))
SCHED_EXT_SYSFS = Path("/sys/kernel/sched_ext")

# Features, in report order. "cgroups" is the one the daemon cannot run without.
FEATURES = (
    "cgroups",
    "psi",
    "bpffs",
    "btf",
    "sched_ext",
    "sched_ext_sub",
    "memcg_bpf_ops",
    "bpf_oom_ops",
    "memcg_kfuncs",
    "bcc",
    "bpf_toolchain",
    "docker",
)
FEATURE_HELP = {
    "cgroups": "per-call cgroups with memory/cpu/pids limits",
    "psi": "pressure-based early throttling and pressure_some feedback",
    "bpffs": "pinning BPF links (sched_ext scheduler)",
    "btf": "CO-RE BPF programs and these capability checks",
    "sched_ext": "in-kernel CPU scheduling of tool calls",
    "sched_ext_sub": "sched_ext sub-schedulers scoped to the agentcg subtree",
    "memcg_bpf_ops": "in-kernel memory policy (memcg_bpf_ops struct_ops)",
    "bpf_oom_ops": "BPF OOM policy (bpf_oom_ops struct_ops)",
    "memcg_kfuncs": "reading memcg usage from BPF programs",
    "bcc": "exec tracing per call (bcc)",
    "bpf_toolchain": "building the BPF schedulers (clang, bpftool, libbpf >= 1.4)",
    "docker": "Docker integration",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    fact: str
    source: str
    gates: tuple[str, ...]


@dataclass
class Report:
    checks: list[Check]
    features: dict[str, bool]

    @property
    def features_off(self) -> list[str]:
        return [f for f in FEATURES if not self.features.get(f, False)]

    @property
    def exit_code(self) -> int:
        if not self.features.get("cgroups", False):
            return 2
        return 1 if self.features_off else 0

    @property
    def verdict(self) -> str:
        return {0: "ok", 1: "degraded", 2: "cannot run"}[self.exit_code]

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "features_off": self.features_off,
            "checks": [{**asdict(c), "gates": list(c.gates)} for c in self.checks],
            "features": dict(self.features),
        }


# --------------------------------------------------------------------------- cgroups


def cgroup_checks(
    mountinfo_text: str, root: Path | None, probe: bool
) -> tuple[list[Check], bool, Path | None]:
    """cgroup2 mount, its controllers and (optionally) a delegation probe.

    Returns (checks, cgroups usable, cgroup2 mount point).
    """
    src = f"read {MOUNTINFO}"
    checks: list[Check] = []
    mount = find_cgroup2_mount(mountinfo_text)
    v1 = v1_controllers(mountinfo_text)
    if mount is None:
        bound = ", ".join(f"{c} at {p}" for c, p in sorted(v1.items())) or "none"
        checks.append(
            Check(
                "cgroup2 mount",
                FAIL,
                f"cgroup2 is not mounted (cgroup v1 controllers: {bound}); "
                "boot with systemd.unified_cgroup_hierarchy=1 or "
                "mount -t cgroup2 none /sys/fs/cgroup",
                src,
                ("cgroups",),
            )
        )
        return checks, False, None
    hybrid = bool(v1)
    checks.append(
        Check(
            "cgroup2 mount",
            OK,
            f"cgroup2 mounted at {mount}"
            + (
                f" (hybrid: cgroup v1 hierarchies also mounted: {', '.join(sorted(v1))})"
                if hybrid
                else ""
            ),
            src,
            ("cgroups",),
        )
    )
    top = Cgroup(mount)
    try:
        available = top.controllers()
        enabled = top.subtree_control()
    except CgroupError as e:
        checks.append(
            Check(
                "cgroup2 controllers",
                FAIL,
                e.message,
                f"read {mount}/cgroup.controllers",
                ("cgroups",),
            )
        )
        return checks, False, mount
    missing = [c for c in WANTED_CONTROLLERS if c not in available]
    fact = (
        f"{mount}: available {' '.join(sorted(available)) or '(none)'}; "
        f"enabled for children {' '.join(sorted(enabled)) or '(none)'}"
    )
    if missing:
        on_v1 = {c: V1_NAMES.get(c, c) for c in missing if V1_NAMES.get(c, c) in v1}
        if on_v1:
            fact += (
                f"; {', '.join(on_v1)} {'is' if len(on_v1) == 1 else 'are'} bound to cgroup v1 "
                f"({', '.join(str(v1[n]) for n in on_v1.values())}) and a controller can serve "
                "only one hierarchy, so agentcg cannot enforce "
                f"{'/'.join(on_v1)} limits on this host; boot with "
                "systemd.unified_cgroup_hierarchy=1 (or cgroup_no_v1=all)"
            )
        elsewhere = [c for c in missing if c not in on_v1]
        if elsewhere:
            fact += f"; missing {', '.join(elsewhere)} (not built into this kernel or disabled)"
    status = FAIL if "memory" in missing else WARN if missing else OK
    checks.append(
        Check(
            "cgroup2 controllers",
            status,
            fact,
            f"read {mount}/cgroup.controllers, {mount}/cgroup.subtree_control; {src}",
            ("cgroups",),
        )
    )
    if "memory" in missing:
        checks.append(
            Check(
                "delegated subtree",
                FAIL,
                "not attempted: cgroup2 has no memory controller here, and cgroup v1 "
                "hierarchies are never touched",
                "skipped",
                ("cgroups",),
            )
        )
        return checks, False, mount
    delegation = _delegation_check(mount, root or mount / "agentcg", probe)
    checks.append(delegation)
    return checks, delegation.status != FAIL, mount


def _delegation_check(mount: Path, root: Path, probe: bool) -> Check:
    name = "delegated subtree"
    gates = ("cgroups",)
    parent = Cgroup(root.parent)
    if mount != root.parent and mount not in root.parents:
        return Check(
            name,
            FAIL,
            f"configured root {root} is not under the cgroup2 mount {mount}; fix daemon.root",
            "config",
            gates,
        )
    if not parent.exists():
        return Check(
            name,
            FAIL,
            f"{parent.path} does not exist; create it or change daemon.root",
            f"stat {parent.path}",
            gates,
        )
    facts: list[str] = []
    status = OK
    try:
        enabled = parent.subtree_control()
        procs = parent.procs()
    except CgroupError as e:
        return Check(name, FAIL, e.message, f"read {parent.path}", gates)
    # The real root has no cgroup.type file; a cgroup-namespace root (containers) does.
    is_root = not parent.has_file("cgroup.type")
    if "memory" in enabled:
        facts.append(f"{parent.path} passes {' '.join(sorted(enabled))} to its children")
    elif procs and not is_root:
        status = FAIL
        facts.append(
            f"{parent.path} has {len(procs)} processes and does not enable memory for its "
            "children; the no-internal-process rule forbids enabling it until they move into a leaf"
        )
    else:
        facts.append(
            f"{parent.path} does not yet enable memory for its children; the daemon may "
            f"enable it ({'root cgroup' if is_root else 'no processes of its own'})"
        )
    if not probe:
        facts.append("creation probe skipped")
        return Check(
            name, status, "; ".join(facts), f"read {parent.path}/cgroup.subtree_control", gates
        )
    probe_cg = parent.child(f"agentcg-doctor-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        probe_cg.create()
        probe_cg.remove()
        facts.append(f"created and removed {probe_cg.path}")
    except CgroupError as e:
        status = FAIL
        facts.append(e.message)
    return Check(name, status, "; ".join(facts), f"mkdir + rmdir {probe_cg.path}", gates)


# --------------------------------------------------------------------------- other checks


def psi_checks(mount: Path | None) -> tuple[list[Check], bool]:
    proc = Path("/proc/pressure/memory")
    try:
        p = parse_pressure(proc.read_text())
        sys_check = Check(
            "PSI",
            OK,
            f"{proc}: some avg10={p['some']['avg10']:g} "
            f"full avg10={p.get('full', {}).get('avg10', 0):g}",
            f"read {proc}",
            ("psi",),
        )
    except (OSError, KeyError, ValueError) as e:
        why = (
            "kernel built without CONFIG_PSI or booted with psi=0"
            if isinstance(e, OSError)
            else "unparsable"
        )
        return [
            Check("PSI", WARN, f"{proc} unreadable ({why}): {e}", f"read {proc}", ("psi",))
        ], False
    cg_file = mount / "memory.pressure" if mount else None
    if cg_file and cg_file.exists():
        cg_check = Check("cgroup PSI", OK, f"{cg_file} present", f"stat {cg_file}", ("psi",))
        ok = True
    else:
        cg_check = Check(
            "cgroup PSI",
            WARN,
            f"no memory.pressure in the cgroup2 root {mount or '(not mounted)'}: "
            "per-cgroup pressure needs the memory controller on cgroup2",
            f"stat {cg_file or 'cgroup2 mount'}",
            ("psi",),
        )
        ok = False
    return [sys_check, cg_check], ok


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


def btf_checks(path: Path = btfmod.VMLINUX) -> tuple[list[Check], dict[str, bool]]:
    feats = dict.fromkeys(
        ("btf", "sched_ext", "sched_ext_sub", "memcg_bpf_ops", "bpf_oom_ops", "memcg_kfuncs"), False
    )
    src = f"parsed {path}"
    try:
        b = btfmod.load_vmlinux(path)
    except (OSError, btfmod.BTFError) as e:
        why = (
            "kernel built without CONFIG_DEBUG_INFO_BTF"
            if isinstance(e, FileNotFoundError)
            else str(e)
        )
        return [
            Check(
                "BTF",
                WARN,
                f"{path} unusable: {why}",
                src,
                ("btf", "sched_ext", "memcg_bpf_ops", "memcg_kfuncs"),
            )
        ], feats
    feats["btf"] = True
    checks = [
        Check(
            "BTF",
            OK,
            f"{path}: {len(b.structs)} structs/unions, {len(b.funcs)} functions",
            src,
            ("btf",),
        )
    ]
    checks.append(sched_ext_check(b, src))
    feats["sched_ext"] = checks[-1].status == OK
    has_sub = b.has_member("sched_ext_ops", "sub_cgroup_id")
    feats["sched_ext_sub"] = has_sub
    checks.append(
        Check(
            "sched_ext sub-schedulers",
            OK if has_sub else WARN,
            "struct sched_ext_ops has member sub_cgroup_id"
            if has_sub
            else "struct sched_ext_ops has no sub_cgroup_id member: a scheduler must take "
            "over whole-system scheduling",
            src,
            ("sched_ext_sub",),
        )
    )
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


def sched_ext_check(b: btfmod.BTF, btf_src: str) -> Check:
    state_file = SCHED_EXT_SYSFS / "state"
    src = f"read {state_file}; {btf_src}"
    has_type = b.has_struct("sched_ext_ops")
    try:
        state = state_file.read_text().strip()
    except OSError:
        state = None
    if state is None or not has_type:
        missing = []
        if state is None:
            missing.append(f"no {state_file}")
        if not has_type:
            missing.append("no struct sched_ext_ops in BTF")
        return Check(
            "sched_ext",
            WARN,
            f"{'; '.join(missing)}: kernel built without CONFIG_SCHED_CLASS_EXT; "
            "CPU shares use cpu.weight only",
            src,
            ("sched_ext",),
        )
    fact = f"state {state}"
    status = OK
    if state != "disabled":
        try:
            ops = (SCHED_EXT_SYSFS / "root" / "ops").read_text().strip()
        except OSError:
            ops = "unknown"
        fact += f"; scheduler {ops!r} is already loaded, agentcg's cannot register while it runs"
        status = WARN
    if b.has_member("sched_ext_ops", "cgroup_set_bandwidth"):
        fact += "; ops.cgroup_set_bandwidth supported"
    return Check("sched_ext", status, fact, src, ("sched_ext",))


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


def docker_check(sockets: tuple[Path, ...] = DOCKER_SOCKETS) -> Check:
    tried = []
    for path in sockets:
        if not path.exists():
            tried.append(f"{path}: absent")
            continue
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return Check(
                "Docker",
                OK,
                f"Docker socket {path} accepts connections",
                f"connect {path}",
                ("docker",),
            )
        except OSError as e:
            tried.append(f"{path}: {e.strerror or e}")
        finally:
            s.close()
    return Check(
        "Docker",
        WARN,
        "no reachable Docker socket (" + "; ".join(tried) + ")",
        "connect " + ", ".join(map(str, sockets)),
        ("docker",),
    )


# --------------------------------------------------------------------------- report


def run_checks(root: Path | None = None, probe: bool = True) -> Report:
    """Collect every check. `root` is the daemon's configured cgroup root (default:
    <cgroup2 mount>/agentcg); `probe=False` skips the mkdir/rmdir delegation probe."""
    checks, cg_ok, mount = cgroup_checks(MOUNTINFO.read_text(), root, probe)
    features = dict.fromkeys(FEATURES, False)
    features["cgroups"] = cg_ok
    psi, features["psi"] = psi_checks(mount)
    checks += psi
    checks.append(bpffs_check(Path("/proc/mounts").read_text()))
    features["bpffs"] = checks[-1].status == OK
    bchecks, bfeats = btf_checks()
    checks += bchecks
    features.update(bfeats)
    for check in (bcc_check(), toolchain_check(), docker_check()):
        checks.append(check)
        features[check.gates[0]] = check.status == OK
    return Report(checks, features)


def render(report: Report) -> str:
    lines = [f"agentcg doctor: {report.verdict} (exit {report.exit_code})"]
    if report.exit_code == 1:
        lines.append(
            "features off: " + ", ".join(f"{f} ({FEATURE_HELP[f]})" for f in report.features_off)
        )
    elif report.exit_code == 2:
        lines.append("agentcg cannot run: no usable cgroup v2 memory controller")
    for c in report.checks:
        lines.append(f"[{c.status:^4}] {c.name}: {c.fact}")
        lines.append(f"       source: {c.source}; gates: {', '.join(c.gates)}")
    return "\n".join(lines)


def doctor_main(json_output: bool, root: Path | None = None) -> int:
    """Print the report (text or JSON); return 0 (full), 1 (degraded) or 2 (cannot run)."""
    report = run_checks(root)
    if json_output:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render(report))
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentcg doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument(
        "--root", type=Path, help="the daemon's cgroup root (default <cgroup2>/agentcg)"
    )
    args = parser.parse_args(argv)
    return doctor_main(args.json, args.root)


if __name__ == "__main__":
    sys.exit(main())

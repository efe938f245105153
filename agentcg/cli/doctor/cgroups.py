"""cgroup v2: the mount, its controllers, the delegation probe, and pressure (PSI)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from agentcg.cli.doctor.base import FAIL, OK, WARN, Check, Findings, Host
from agentcg.kernel.cgroup import (
    MOUNTINFO,
    Cgroup,
    CgroupError,
    find_cgroup2_mount,
    parse_pressure,
    v1_controllers,
)

WANTED_CONTROLLERS = ("memory", "cpu", "pids", "io")
# cgroup v1 names of the v2 controllers that were renamed.
V1_NAMES = {"io": "blkio"}


def collect(host: Host) -> Findings:
    checks, cg_ok, mount = cgroup_checks(host.mountinfo, host.root, host.probe)
    psi, psi_ok = psi_checks(mount)
    return checks + psi, {"cgroups": cg_ok, "psi": psi_ok}


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

"""sched_ext: the kernel's extensible scheduler class and its sub-scheduler support."""

from __future__ import annotations

from pathlib import Path

from agentcg.bpf.sched import NAME as SCHED_NAME
from agentcg.cli.doctor.base import OK, WARN, Check, Findings, Host
from agentcg.kernel import btf as btfmod

SCHED_EXT_SYSFS = Path("/sys/kernel/sched_ext")


def collect(host: Host) -> Findings:
    """Nothing to report without BTF: the BPF domain's BTF warning gates sched_ext."""
    b = host.btf.btf
    if b is None:
        return [], {"sched_ext": False, "sched_ext_sub": False}
    src = f"parsed {host.btf_path}"
    scx = sched_ext_check(b, src)
    has_sub = b.has_member("sched_ext_ops", "sub_cgroup_id")
    sub = Check(
        "sched_ext sub-schedulers",
        OK if has_sub else WARN,
        "struct sched_ext_ops has member sub_cgroup_id"
        if has_sub
        else "struct sched_ext_ops has no sub_cgroup_id member: a scheduler must take "
        "over whole-system scheduling",
        src,
        ("sched_ext_sub",),
    )
    return [scx, sub], {"sched_ext": scx.status == OK, "sched_ext_sub": has_sub}


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
        if ops == SCHED_NAME:
            fact += "; agentcg's scheduler is running (its daemon loaded it)"
        else:
            fact += f"; scheduler {ops!r} is loaded, agentcg's cannot register while it runs"
            status = WARN
    if b.has_member("sched_ext_ops", "cgroup_set_bandwidth"):
        fact += "; ops.cgroup_set_bandwidth supported"
    return Check("sched_ext", status, fact, src, ("sched_ext",))

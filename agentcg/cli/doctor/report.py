"""The report: every domain's checks in order, the features they decide, the verdict,
and its text or JSON form."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from agentcg.cli.doctor import bpf, cgroups, docker, memory, sched_ext
from agentcg.cli.doctor.base import Check, Findings, Host

DESCRIPTION = "what this host offers agentcg, how each fact was found, what it gates"

# Check domains, in report order; each returns its checks and the features they decide.
DOMAINS: Sequence[Callable[[Host], Findings]] = (
    cgroups.collect,
    bpf.collect,
    memory.collect,
    sched_ext.collect,
    docker.collect,
)

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
    "memwatch",
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
    "memwatch": "in-kernel memory trouble detection (else POLLPRI + PSI, slower)",
    "bpf_toolchain": "building the BPF schedulers (clang, bpftool, libbpf >= 1.4)",
    "docker": "Docker integration",
}


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


def run_checks(root: Path | None = None, probe: bool = True) -> Report:
    """Collect every check. `root` is the daemon's configured cgroup root (default:
    <cgroup2 mount>/agentcg); `probe=False` skips the mkdir/rmdir delegation probe."""
    host = Host.read(root, probe)
    checks: list[Check] = []
    features = dict.fromkeys(FEATURES, False)
    for collect in DOMAINS:
        found, feats = collect(host)
        unknown = set(feats) - set(FEATURES)
        if unknown:
            raise ValueError(f"{collect.__module__} reports features not in FEATURES: {unknown}")
        checks += found
        features.update(feats)
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
    parser = argparse.ArgumentParser(prog="agentcg doctor", description=DESCRIPTION)
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument(
        "--root", type=Path, help="the daemon's cgroup root (default <cgroup2>/agentcg)"
    )
    args = parser.parse_args(argv)
    return doctor_main(args.json, args.root)

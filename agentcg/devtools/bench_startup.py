"""`agentcg bench startup`: how long `agentcg run` takes to start, next to the bare
interpreter it runs on.

Start-up is everything before the daemon is asked: interpreter, imports, option
parsing, the connect. `agentcg run -- true` runs with $AGENTCG_SOCKET naming a socket
nobody listens on, so it exits right after its first connect attempt. Variants run
interleaved round-robin (order rotated every round), so machine noise hits them alike:

- ``python``: ``<interpreter> -c pass``, the interpreter of the `agentcg` executable
  (same site-packages, same .pth files);
- ``run``: ``agentcg run -- true`` up to its connect;
- ``cli``: ``agentcg --version``, the click CLI, for comparison.

Each run records wall time and the CPU time (user + system) the kernel charged the
process (wait4): on a busy machine the CPU time is the steadier of the two.
Needs no root and no daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentcg.devtools.benchstats import environment, progress, ratio, summarize

VARIANTS = ("python", "run", "cli")
TITLES = {
    "python": "interpreter (-c pass)",
    "run": "agentcg run -- true (to connect)",
    "cli": "agentcg --version (click CLI)",
}


def find_executable() -> Path:
    """The `agentcg` executable next to this interpreter, else the one on PATH."""
    here = Path(sys.executable).parent / "agentcg"
    found = here if here.exists() else shutil.which("agentcg")
    if not found:
        raise RuntimeError("no agentcg executable found (pip install the package first)")
    return Path(found)


def interpreter_of(script: Path) -> str:
    """The interpreter named by a console script's #! line."""
    first = script.read_bytes().split(b"\n", 1)[0]
    if not first.startswith(b"#!"):
        raise RuntimeError(f"{script} has no #! line")
    return first[2:].decode().split()[0]


def spawn_timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of one run of `argv` with its output discarded."""
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=quiet)
    _, _, usage = os.wait4(pid, 0)
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime


def startup(runs: int, executable: Path | None = None) -> dict[str, Any]:
    """Run the start-up benchmark; a JSON-able report whose "text" key is the table."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    exe = executable or find_executable()
    python = interpreter_of(exe)
    argvs = {
        "python": [python, "-c", "pass"],
        "run": [str(exe), "run", "--", "true"],
        "cli": [str(exe), "--version"],
    }
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    warmup = max(1, min(5, runs // 10))
    with tempfile.TemporaryDirectory(prefix="agentcg-bench-startup-") as tmp:
        env = dict(os.environ, AGENTCG_SOCKET=str(Path(tmp) / "nobody-listens.sock"))
        probe = subprocess.run(argvs["run"], env=env, capture_output=True, text=True, check=False)
        if "cannot reach the agentcg daemon" not in probe.stderr:
            raise RuntimeError(f"agentcg run did not stop at its connect: {probe.stderr.strip()}")
        progress(f"{runs} runs x {len(VARIANTS)} variants, interleaved")
        for i in range(warmup + runs):
            k = i % len(VARIANTS)
            for name in VARIANTS[k:] + VARIANTS[:k]:
                w, c = spawn_timed(argvs[name], env)
                if i >= warmup:
                    wall[name].append(w)
                    cpu[name].append(c)
    stats = {name: summarize(wall[name]) for name in VARIANTS}
    cpu_stats = {name: summarize(cpu[name]) for name in VARIANTS}
    report: dict[str, Any] = {
        "bench": "startup",
        "runs": runs,
        "executable": str(exe),
        "interpreter": python,
        "environment": environment(),
        "variants": stats,
        "cpu": cpu_stats,
        "ratios": {
            f"{v}/python": {
                "wall_p50": ratio(stats[v]["p50_ms"], stats["python"]["p50_ms"]),
                "wall_p99": ratio(stats[v]["p99_ms"], stats["python"]["p99_ms"]),
                "cpu_p50": ratio(cpu_stats[v]["p50_ms"], cpu_stats["python"]["p50_ms"]),
            }
            for v in ("run", "cli")
        },
    }
    report["text"] = format_report(report)
    return report


def format_report(report: dict[str, Any]) -> str:
    wall, cpu = report["variants"], report["cpu"]
    lines = [
        f"agentcg bench startup: {report['runs']} runs per variant, interleaved; "
        f"{report['executable']} on {report['interpreter']}",
        "",
        f"{'variant':<36}{'wall p50':>10}{'p95':>8}{'p99':>8}{'cpu p50':>10}   (ms)",
    ]
    for name in VARIANTS:
        w = wall[name]
        lines.append(
            f"{TITLES[name]:<36}{w['p50_ms']:>10.1f}{w['p95_ms']:>8.1f}{w['p99_ms']:>8.1f}"
            f"{cpu[name]['p50_ms']:>10.1f}"
        )
    lines += ["", f"{'ratio':<36}{'wall p50':>10}{'p99':>8}{'cpu p50':>10}"]
    for key, r in report["ratios"].items():
        cells = [f"{'n/a' if x is None else f'{x:.2f}x'}" for x in r.values()]
        lines.append(f"{key:<36}{cells[0]:>10}{cells[1]:>8}{cells[2]:>10}")
    return "\n".join(lines)

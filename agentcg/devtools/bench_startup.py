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

Needs no root and no daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentcg.devtools.benchstats import environment, interleaved, progress, ratio, summarize

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


def _timed(argv: list[str], env: dict[str, str]) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )

    return run


def startup(runs: int, executable: Path | None = None) -> dict[str, Any]:
    """Run the start-up benchmark; a JSON-able report whose "text" key is the table."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    exe = executable or find_executable()
    python = interpreter_of(exe)
    with tempfile.TemporaryDirectory(prefix="agentcg-bench-startup-") as tmp:
        env = dict(os.environ, AGENTCG_SOCKET=str(Path(tmp) / "nobody-listens.sock"))
        probe = subprocess.run(
            [str(exe), "run", "--", "true"], env=env, capture_output=True, text=True, check=False
        )
        if "cannot reach the agentcg daemon" not in probe.stderr:
            raise RuntimeError(f"agentcg run did not stop at its connect: {probe.stderr.strip()}")
        progress(f"{runs} runs x {len(VARIANTS)} variants, interleaved")
        samples = interleaved(
            {
                "python": _timed([python, "-c", "pass"], env),
                "run": _timed([str(exe), "run", "--", "true"], env),
                "cli": _timed([str(exe), "--version"], env),
            },
            runs,
            max(1, min(5, runs // 10)),
        )
    stats = {name: summarize(samples[name]) for name in VARIANTS}
    report: dict[str, Any] = {
        "bench": "startup",
        "runs": runs,
        "executable": str(exe),
        "interpreter": python,
        "environment": environment(),
        "variants": stats,
        "ratios": {
            f"{v}/python": {
                q: ratio(stats[v][f"{q}_ms"], stats["python"][f"{q}_ms"]) for q in ("p50", "p99")
            }
            for v in ("run", "cli")
        },
    }
    report["text"] = format_report(report)
    return report


def format_report(report: dict[str, Any]) -> str:
    stats = report["variants"]
    lines = [
        f"agentcg bench startup: {report['runs']} runs per variant, interleaved; "
        f"{report['executable']} on {report['interpreter']}",
        "",
        f"{'variant':<36}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}",
    ]
    for name in VARIANTS:
        s = stats[name]
        lines.append(f"{TITLES[name]:<36}{s['p50_ms']:>9.1f}{s['p95_ms']:>9.1f}{s['p99_ms']:>9.1f}")
    lines += ["", f"{'ratio':<36}{'p50':>9}{'p99':>9}"]
    for key, r in report["ratios"].items():
        cells = "".join(f"{'n/a' if x is None else f'{x:.2f}x':>9}" for x in r.values())
        lines.append(f"{key:<36}{cells}")
    return "\n".join(lines)

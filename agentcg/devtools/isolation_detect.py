"""Detection -> action latency of the daemon's memory paths, side by side: the BPF
probe and the fallback (memory.events.local POLLPRI + PSI triggers).

Each trial is a call over its ask (64 MiB asked, 96 MiB touched). The kernel's own
timestamp of the call's first futile reclaim is the moment of detection: a private
tracefs instance (trace_clock "mono") records vmscan:mm_vmscan_memcg_reclaim_end
filtered to the call's cgroup id, so nothing needs compiling. The daemon's
``limit_raised`` event carries ``at_ns``, the time of its memory.high write. Both are
CLOCK_MONOTONIC on the same machine: the difference is what each path costs, the
kernel's notification rate limit and the daemon's wake-up included.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentcg.devtools.benchstats import percentile
from agentcg.devtools.daemonproc import DaemonProcess
from agentcg.devtools.isolation import start_daemon

TRACEFS = Path("/sys/kernel/tracing")
EVENT = "vmscan/mm_vmscan_memcg_reclaim_end"
TOUCH = (
    "import sys\n"
    "chunks = []\n"
    "for _ in range(96):\n"
    "    chunks.append(bytearray(1 << 20))\n"
    "    chunks[-1][::4096] = b'x' * 256\n"
)
_LINE = re.compile(r"\s(\d+\.\d+):\s+mm_vmscan_memcg_reclaim_end:")


def first_timestamp_ns(trace_text: str) -> int | None:
    """CLOCK_MONOTONIC ns of the first reclaim_end line of a tracefs ``trace`` file."""
    m = _LINE.search(trace_text)
    return None if m is None else round(float(m.group(1)) * 1e9)


class TraceInstance:
    """A private tracefs instance recording one event with the mono clock."""

    def __init__(self) -> None:
        if not (TRACEFS / "instances").is_dir():
            raise RuntimeError(f"no tracefs at {TRACEFS}: mount -t tracefs none {TRACEFS}")
        self.dir = TRACEFS / "instances" / f"agentcg-bench-{secrets.token_hex(3)}"
        self.dir.mkdir()
        (self.dir / "trace_clock").write_text("mono")

    def arm(self, cgroup_id: int) -> None:
        ev = self.dir / "events" / EVENT
        (ev / "filter").write_text(f"memcg_id == {cgroup_id} && nr_reclaimed < 32")
        (self.dir / "trace").write_text("")
        (ev / "enable").write_text("1")

    def first_ns(self) -> int | None:
        (self.dir / "events" / EVENT / "enable").write_text("0")
        return first_timestamp_ns((self.dir / "trace").read_text())

    def close(self) -> None:
        self.dir.rmdir()


def _trials(daemon: DaemonProcess, trace: TraceInstance, trials: int) -> list[float]:
    from agentcg.client import Client

    os.environ["AGENTCG_SOCKET"] = str(daemon.socket)
    out: list[float] = []
    with Client() as c:
        for _ in range(trials):
            call = c.tool_call(memory="64M", label="overask").begin()
            trace.arm(os.stat(call.info["cgroup"]).st_ino)
            proc = call.popen([sys.executable, "-c", TOUCH], stdout=subprocess.DEVNULL)
            proc.wait(600)
            call.end(proc.returncode)
            first = trace.first_ns()
            raised = [e["data"]["at_ns"] for e in call.events if e["event"] == "limit_raised"]
            if raised and first is not None:
                out.append((raised[0] - first) / 1e6)
    return out


def _summary(lat: list[float]) -> dict[str, Any]:
    return {
        "n": len(lat),
        "p50_ms": round(percentile(lat, 50), 2) if lat else None,
        "p99_ms": round(percentile(lat, 99), 2) if lat else None,
        "samples_ms": [round(x, 2) for x in lat],
    }


def detect_latency(
    bpf_daemon: DaemonProcess, work_dir: Path, trials: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """``bpf_daemon`` runs with its probe loaded; a fallback daemon is started here."""
    trace = TraceInstance()
    report: dict[str, Any] = {}
    try:
        log(f"detection latency, bpf: {trials} calls over their ask")
        report["bpf"] = _summary(_trials(bpf_daemon, trace, trials))
        events = start_daemon(work_dir, False, log)
        try:
            log(f"detection latency, events: {trials} calls over their ask")
            report["events"] = _summary(_trials(events, trace, trials))
        finally:
            events.remove()
    finally:
        trace.close()
    return report

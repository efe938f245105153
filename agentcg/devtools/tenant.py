"""One tenant of `agentcg bench isolation`: replays a memory trace with real memory.

    python -m agentcg.devtools.tenant TRACE --speed 50 --scale 1.0 --chunk 4194304

It loads the trace, says "ready", and waits for a line "go <t0_ns>" on stdin; then it
holds, at each sample's time (t0 + t/speed on CLOCK_MONOTONIC), the sample's usage
(times scale) minus the interpreter's own footprint, allocating in chunks that it
touches page by page and timing each allocation, and freeing chunks as the trace
falls. It never waits for the trace when it falls behind: under a slow machine the
tenants' peaks move and may overlap, as they would. At the end it prints one JSON line
{"latencies_ms": [...], "completion_s": ..., "lag_s": ...}; a tenant that is killed
prints nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agentcg.devtools.traces import load_trace

PAGE = 4096
FOOTPRINT = 16 * 1024**2  # about what the interpreter itself holds; not allocated again


def _touch(n: int) -> bytearray:
    chunk = bytearray(n)  # large: its own mmap, given back to the kernel on del
    chunk[::PAGE] = b"\x01" * len(range(0, n, PAGE))
    return chunk


def replay(trace_path: Path, speed: float, scale: float, chunk: int) -> dict[str, object]:
    trace = load_trace(trace_path).scaled(speed, scale)
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 2 or line[0] != "go":
        raise SystemExit(f"tenant: expected 'go <t0_ns>' on stdin, got {line!r}")
    t0 = int(line[1]) / 1e9
    while (left := t0 - time.monotonic()) > 0:
        time.sleep(min(0.01, left))
    held: list[bytearray] = []
    latencies: list[float] = []
    lag = 0.0
    for t, usage in zip(trace.times, trace.usage, strict=True):
        ahead = t0 + t - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        lag = max(lag, -ahead)
        want = max(0, usage - FOOTPRINT) // chunk
        while len(held) < want:
            start = time.perf_counter()
            held.append(_touch(chunk))
            latencies.append((time.perf_counter() - start) * 1e3)
        while len(held) > want:
            held.pop()
    return {
        "latencies_ms": [round(x, 3) for x in latencies],
        "completion_s": round(time.monotonic() - t0, 3),
        "lag_s": round(lag, 3),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace", type=Path)
    p.add_argument("--speed", type=float, default=50.0)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--chunk", type=int, default=4 * 1024**2)
    a = p.parse_args(argv)
    print(json.dumps(replay(a.trace, a.speed, a.scale, a.chunk)), flush=True)


if __name__ == "__main__":
    main()

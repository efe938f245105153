"""Agent memory traces for `agentcg bench isolation`: the ``resources.json`` files the
AgentCgroup authors recorded per task (podman stats samples), read into what a tenant
replays. Pure: no I/O but reading the file.

A sample looks like ``{"epoch": 1770430927.88, "mem_usage": "186MB / 134.5GB", ...}``;
sizes use podman's units (decimal kB/MB/GB, binary KiB/MiB/GiB, bare B).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*")


class TraceError(ValueError):
    """A trace file that is not a resources.json this reader understands."""


def parse_usage(text: str) -> int:
    """Bytes in use from a podman ``mem_usage`` field: "186MB / 134.5GB" -> 186000000."""
    used = text.split("/", 1)[0]
    m = _SIZE_RE.fullmatch(used)
    if m is None or m.group(2).lower() not in _UNITS:
        raise TraceError(f"cannot read memory usage {text!r}")
    return round(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class Trace:
    name: str  # the task, e.g. "NVIDIA__nv-ingest-71" (the trace's directory)
    times: tuple[float, ...]  # seconds since the first sample
    usage: tuple[int, ...]  # bytes in use at each time

    @property
    def duration(self) -> float:
        return self.times[-1]

    @property
    def peak(self) -> int:
        return max(self.usage)

    def scaled(self, speed: float, memory_scale: float) -> Trace:
        """Replayed ``speed`` times faster with usage times ``memory_scale``."""
        return Trace(
            self.name,
            tuple(t / speed for t in self.times),
            tuple(round(u * memory_scale) for u in self.usage),
        )


def parse_trace(name: str, data: object) -> Trace:
    """A Trace from the parsed JSON of a resources.json."""
    samples = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(samples, list) or not samples:
        raise TraceError(f"{name}: no samples (expected {{'samples': [...]}})")
    points: list[tuple[float, int]] = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or not isinstance(s.get("epoch"), int | float):
            raise TraceError(f"{name}: sample {i} has no epoch")
        if not isinstance(s.get("mem_usage"), str):
            raise TraceError(f"{name}: sample {i} has no mem_usage")
        points.append((float(s["epoch"]), parse_usage(s["mem_usage"])))
    points.sort()
    t0 = points[0][0]
    return Trace(name, tuple(t - t0 for t, _ in points), tuple(u for _, u in points))


def load_trace(path: Path) -> Trace:
    """A trace from a resources.json, or from the directory holding one."""
    if path.is_dir():
        path = path / "resources.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TraceError(f"cannot read trace {path}: {e}") from None
    return parse_trace(path.parent.name, data)


def target_at(trace: Trace, t: float) -> int:
    """Usage the replay should hold at time ``t``: the last sample at or before it."""
    lo, hi = 0, len(trace.times)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trace.times[mid] <= t:
            lo = mid
        else:
            hi = mid
    return trace.usage[lo]

"""Parsing of the text the kernel shows in procfs and cgroupfs: mountinfo, a process's
/proc/<pid>/cgroup, flat-keyed files (cgroup.events, memory.stat, cpu.stat), PSI and
single-value limits. Pure functions over strings, except the two mount lookups, which
read /proc/self/mountinfo when given no text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

# cgroup v1 mount options that are not controller names.
_V1_NON_CONTROLLER_OPTS = frozenset(
    {"rw", "ro", "none", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods"}
)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo (only the fields we use)."""

    mount_point: Path
    root: str
    fstype: str
    source: str
    super_options: frozenset[str]


def _unescape_mount(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/<pid>/mountinfo text (see proc(5)); malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf = left.split()
        rf = right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        mounts.append(
            Mount(
                mount_point=Path(_unescape_mount(lf[4])),
                root=_unescape_mount(lf[3]),
                fstype=rf[0],
                source=_unescape_mount(rf[1]),
                super_options=frozenset(rf[2].split(",")),
            )
        )
    return mounts


def find_cgroup2_mount(mountinfo_text: str | None = None) -> Path | None:
    """Mount point of the cgroup2 filesystem, or None when it is not mounted.

    Prefers a mount of the hierarchy's root ("/") over bind mounts of a subtree; on a
    hybrid host this is e.g. /sys/fs/cgroup/unified.
    """
    text = MOUNTINFO.read_text() if mountinfo_text is None else mountinfo_text
    cg2 = [m for m in parse_mountinfo(text) if m.fstype == "cgroup2"]
    for m in cg2:
        if m.root == "/":
            return m.mount_point
    return cg2[0].mount_point if cg2 else None


def v1_controllers(mountinfo_text: str | None = None) -> dict[str, Path]:
    """Controllers bound to cgroup v1 hierarchies -> their mount points."""
    text = MOUNTINFO.read_text() if mountinfo_text is None else mountinfo_text
    bound: dict[str, Path] = {}
    for m in parse_mountinfo(text):
        if m.fstype != "cgroup":
            continue
        for opt in m.super_options:
            if opt not in _V1_NON_CONTROLLER_OPTS and "=" not in opt:
                bound.setdefault(opt, m.mount_point)
    return bound


def parse_proc_cgroup(text: str) -> str | None:
    """The cgroup v2 path from /proc/<pid>/cgroup text (the "0::" line), or None."""
    for line in text.splitlines():
        if line.startswith("0::"):
            path = line[3:]
            # A task whose cgroup was removed (possible for zombies) shows a suffix.
            return path.removesuffix(" (deleted)")
    return None


def parse_keyed(text: str) -> dict[str, int]:
    """Parse a flat-keyed file ("key value" per line: cgroup.events, memory.stat, cpu.stat)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key and value:
            out[key] = int(value)
    return out


def parse_pressure(text: str) -> dict[str, dict[str, float]]:
    """Parse PSI text ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0", "full ...").

    Returns {"some": {"avg10": .., "avg60": .., "avg300": .., "total": ..}, "full": {...}};
    "total" is cumulative stall time in microseconds (kept as float for one value type).
    """
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        if not fields:
            continue
        out[kind] = {k: float(v) for k, _, v in (f.partition("=") for f in fields)}
    return out


def parse_max(text: str) -> int | None:
    """Parse a single-value limit file: "max" -> None, else the integer."""
    value = text.strip()
    return None if value == "max" else int(value)

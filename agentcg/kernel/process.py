"""Is a process still the one we saw? A pid plus its start time (clock ticks since
boot, /proc/<pid>/stat field 22) names one process for good: pids are recycled, start
times with them never repeat."""

from __future__ import annotations


def start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may contain spaces and parens: the fields after the last ')' are fixed.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def alive(pid: int, started: int | None) -> bool:
    """The process `pid` that started at `started` still exists (None: any with that pid)."""
    now = start_ticks(pid)
    return now is not None and (started is None or now == started)

"""Is a process still the one we saw? A pid plus its start time (clock ticks since
boot, /proc/<pid>/stat field 22) names one process for good: pids are recycled, start
times with them never repeat."""

from __future__ import annotations

from agentcg.kernel.cgroup import read_bytes


def stat_fields(pid: int) -> list[bytes]:
    """/proc/<pid>/stat from its third field (state) on; OSError if there is no such pid."""
    return parse_stat(read_bytes(f"/proc/{pid}/stat"))


def parse_stat(stat: bytes) -> list[bytes]:
    """The fields of a /proc/<pid>/stat text from the third (state) on. comm may contain
    spaces and parens: the fields after the last ')' are fixed."""
    return stat[stat.rindex(b")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    try:
        return int(stat_fields(pid)[19])
    except OSError:
        return None


def alive(pid: int, started: int | None) -> bool:
    """The process `pid` that started at `started` still exists (None: any with that pid)."""
    now = start_ticks(pid)
    return now is not None and (started is None or now == started)

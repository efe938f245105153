"""The kernel OOM killer's preference for a process: /proc/<pid>/oom_score_adj.

The OOM killer takes the task with the highest badness (its memory plus adj/1000 of
the memory the OOM domain may hold) first. Written by a process with CAP_SYS_RESOURCE
(the daemon), the value is also the floor the process may not lower it below
(oom_score_adj_min), so a tool cannot undo it. Children inherit it on fork.
"""

from __future__ import annotations

import os

from agentcg.kernel.cgroup import CgroupError

MIN_ADJ, MAX_ADJ = -1000, 1000


def set_oom_score_adj(pid: int, adj: int) -> None:
    """CgroupError (not_found when the process is gone) if the write fails."""
    if not MIN_ADJ <= adj <= MAX_ADJ:
        raise CgroupError("invalid_value", f"oom_score_adj must be {MIN_ADJ}..{MAX_ADJ}, not {adj}")
    try:
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(adj).encode())
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise CgroupError("not_found", f"process {pid} is gone; nothing to protect") from None
    except OSError as e:
        raise CgroupError(
            "internal", f"cannot write oom_score_adj of process {pid}: {e.strerror}"
        ) from None

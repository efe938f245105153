"""CgroupError: what a failed cgroupfs operation tells the caller.

``os_error`` turns the OSError of a read, write, mkdir or rmdir into an error code
and a hint; ``validate_child_name`` and ``fmt_limit`` refuse bad arguments before
anything is written.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from agentcg.core.errors import AgentcgError

# Files a child directory name must never shadow: interface files live in the same
# directory as child cgroups, and a controller enabled later adds new "<ctrl>.*" files.
_RESERVED_PREFIXES = (
    "cgroup",
    "cpu",
    "cpuset",
    "io",
    "memory",
    "pids",
    "rdma",
    "hugetlb",
    "misc",
    "dmem",
)
_RESERVED_NAME = re.compile(r"^(" + "|".join(_RESERVED_PREFIXES) + r")\.")
_NAME_MAX = 255


class CgroupError(AgentcgError):
    """A cgroupfs operation failed; `errno` keeps the underlying OS error number, if any."""

    def __init__(self, code: str, message: str, os_errno: int | None = None) -> None:
        super().__init__(code, message)
        self.errno = os_errno


def validate_child_name(name: str) -> None:
    """Reject names that are not a single, unambiguous cgroup directory name."""
    problem = None
    if not name:
        problem = "is empty"
    elif "/" in name or "\0" in name or "\n" in name:
        problem = "contains '/', NUL or a newline"
    elif name.startswith("."):
        problem = "starts with '.' (includes '.' and '..')"
    elif _RESERVED_NAME.match(name):
        problem = "clashes with cgroup interface file names (<controller>.<file>)"
    elif len(name.encode()) > _NAME_MAX:
        problem = f"is longer than {_NAME_MAX} bytes"
    if problem:
        raise CgroupError("invalid_value", f"bad cgroup name {name!r}: it {problem}; pick another")


def fmt_limit(value: int | None) -> str:
    """A limit as a limit file takes it: None is "max"."""
    if value is None:
        return "max"
    if isinstance(value, bool) or value < 0:
        raise CgroupError(
            "invalid_value", f"limit must be a non-negative integer or None, not {value!r}"
        )
    return str(value)


def os_error(path: Path, e: OSError, action: str) -> CgroupError:
    """The CgroupError for `e`, raised trying to `action` the cgroup at `path`."""
    en = e.errno
    what = f"cannot {action} cgroup {path}: {os.strerror(en) if en else e}"
    if en == errno.ENOENT:
        return CgroupError("not_found", f"{what}; it (or the file) does not exist", en)
    if en == errno.EEXIST:
        return CgroupError("conflict", f"{what}; pass exist_ok=True to reuse it", en)
    if en == errno.EBUSY:
        hint = "it still has processes or child cgroups; kill or move them first"
        return CgroupError("busy", f"{what}; {hint}", en)
    if en in (errno.EACCES, errno.EPERM):
        return CgroupError(
            "unauthorized", f"{what}; run as root or get this subtree delegated to you", en
        )
    if en == errno.ESRCH:
        return CgroupError("not_found", f"{what}; the process has exited", en)
    if en in (errno.EINVAL, errno.ERANGE):
        return CgroupError("invalid_value", f"{what}; the kernel rejected the value", en)
    if en == errno.EOPNOTSUPP:
        return CgroupError(
            "unavailable", f"{what}; the controller is not enabled for this cgroup", en
        )
    return CgroupError("internal", f"{what}; check dmesg", en)

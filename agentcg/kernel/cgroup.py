"""A small, typed library over the cgroup v2 filesystem.

Everything here is plain file I/O on cgroupfs: no caching, no daemon state. Each
write is a single write(2) call, because the kernel parses one write at a time and a
buffered writer could split or merge values (cgroup.procs takes one pid per write).
CgroupError and the argument checks live in cgroup_errors, the parsers of what cgroupfs
and procfs show in cgroupfs_text; both are re-exported here.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from agentcg.kernel.cgroup_errors import CgroupError as CgroupError
from agentcg.kernel.cgroup_errors import fmt_limit, os_error
from agentcg.kernel.cgroup_errors import validate_child_name as validate_child_name
from agentcg.kernel.cgroupfs_text import MOUNTINFO as MOUNTINFO
from agentcg.kernel.cgroupfs_text import Mount as Mount
from agentcg.kernel.cgroupfs_text import find_cgroup2_mount as find_cgroup2_mount
from agentcg.kernel.cgroupfs_text import parse_keyed as parse_keyed
from agentcg.kernel.cgroupfs_text import parse_max as parse_max
from agentcg.kernel.cgroupfs_text import parse_mountinfo as parse_mountinfo
from agentcg.kernel.cgroupfs_text import parse_pressure as parse_pressure
from agentcg.kernel.cgroupfs_text import parse_proc_cgroup as parse_proc_cgroup
from agentcg.kernel.cgroupfs_text import v1_controllers as v1_controllers


def cgroup_path_of_pid(pid: int) -> str:
    """The v2 cgroup path of `pid`, relative to the cgroup2 mount (e.g. "/agentcg/s1")."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except FileNotFoundError:
        raise CgroupError(
            "not_found", f"process {pid} does not exist; it may have exited", errno.ESRCH
        ) from None
    path = parse_proc_cgroup(text)
    if path is None:
        raise CgroupError(
            "unavailable",
            f"process {pid} has no cgroup v2 membership (no 0:: line in /proc/{pid}/cgroup); "
            "mount cgroup2",
        )
    return path


def read_bytes(path: Path | str) -> bytes:
    """A whole cgroupfs or procfs file: open, read to the end, close (no buffered
    file object, whose fstat/ioctl/lseek calls cost more than the read here)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


# --------------------------------------------------------------------------- cgroup


class Cgroup:
    """One cgroup v2 directory. Cheap to construct; nothing is touched until a method runs.

    File paths are built as strings from `dir`: on the per-call path the daemon opens a
    dozen cgroup files, and pathlib's joins cost more than the reads (profiled)."""

    def __init__(self, path: Path | str) -> None:
        self.dir = os.fspath(path)

    @functools.cached_property
    def path(self) -> Path:
        return Path(self.dir)

    def file(self, name: str) -> str:
        """The path of one of this cgroup's files (or of a child)."""
        return f"{self.dir}/{name}"

    def __repr__(self) -> str:
        return f"Cgroup({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cgroup) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def of_pid(cls, pid: int, mount: Path | None = None) -> Cgroup:
        """The cgroup `pid` belongs to, under `mount` (default: the cgroup2 mount)."""
        base = mount or find_cgroup2_mount()
        if base is None:
            raise CgroupError("unavailable", "cgroup2 is not mounted; mount it at /sys/fs/cgroup")
        return cls(base / cgroup_path_of_pid(pid).lstrip("/"))

    @property
    def name(self) -> str:
        return self.path.name

    def child(self, name: str) -> Cgroup:
        validate_child_name(name)
        return Cgroup(self.file(name))

    def children(self) -> list[Cgroup]:
        """Direct child cgroups, sorted by name; [] if this cgroup does not exist."""
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        return [Cgroup(e.path) for e in entries if e.is_dir(follow_symlinks=False)]

    def exists(self) -> bool:
        return os.path.exists(self.file("cgroup.procs"))

    # ---- lifecycle

    def create(self, exist_ok: bool = False) -> Cgroup:
        try:
            os.mkdir(self.dir)
        except FileExistsError as e:
            if exist_ok and os.path.isdir(self.dir):
                return self
            raise os_error(self.path, e, "create") from None
        except OSError as e:
            raise os_error(self.path, e, "create") from None
        return self

    def remove(self) -> None:
        """rmdir this cgroup; it must have no processes and no children."""
        try:
            os.rmdir(self.dir)
        except OSError as e:
            raise os_error(self.path, e, "remove") from None

    def remove_tree(self, kill: bool = False, timeout: float = 5.0) -> None:
        """Remove this cgroup and all descendants, deepest first.

        With kill=True, populated cgroups are emptied with cgroup.kill and we wait (up to
        `timeout` seconds in total) for the kernel to report them unpopulated; without it
        a populated cgroup raises a "busy" CgroupError. A missing cgroup is not an error.
        """
        deadline = time.monotonic() + timeout
        if not self.path.exists():
            return
        if kill and self.populated:
            self.kill()
            if not self.wait_populated(False, max(0.0, deadline - time.monotonic())):
                raise CgroupError(
                    "timeout",
                    f"cgroup {self.path} still has processes {timeout:g}s after cgroup.kill; "
                    "they may be stuck in uninterruptible sleep (check ps -o stat)",
                )
        for c in self._post_order():
            try:
                c.path.rmdir()
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise os_error(c.path, e, "remove") from None
                # Exited tasks may linger briefly as zombies being reaped; retry until the
                # deadline instead of failing on the first EBUSY.
                c._rmdir_retry(deadline, e)

    def _rmdir_retry(self, deadline: float, first: OSError) -> None:
        err = first
        while time.monotonic() < deadline:
            time.sleep(0.01)
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                err = e
        raise os_error(self.path, err, "remove")

    def _post_order(self) -> Iterator[Cgroup]:
        for c in self.children():
            yield from c._post_order()
        yield self

    # ---- raw file access

    def read(self, file: str) -> str:
        try:
            return read_bytes(self.file(file)).decode()
        except OSError as e:
            raise os_error(self.path, e, f"read {file} of") from None

    def read_int(self, file: str) -> int | None:
        """Read a single-value file; "max" -> None."""
        return parse_max(self.read(file))

    def read_keyed(self, file: str) -> dict[str, int]:
        return parse_keyed(self.read(file))

    def write(self, file: str, value: str | int) -> None:
        data = str(value).encode()
        try:
            fd = os.open(self.file(file), os.O_WRONLY)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            raise os_error(self.path, e, f"write {str(value)!r} to {file} of") from None

    def has_file(self, file: str) -> bool:
        return os.path.exists(self.file(file))

    # ---- controllers

    def controllers(self) -> frozenset[str]:
        """Controllers available in this cgroup (cgroup.controllers)."""
        return frozenset(self.read("cgroup.controllers").split())

    def subtree_control(self) -> frozenset[str]:
        """Controllers enabled for this cgroup's children (cgroup.subtree_control)."""
        return frozenset(self.read("cgroup.subtree_control").split())

    def enable_controllers(self, names: Iterable[str]) -> None:
        """Enable controllers for children, e.g. ["memory", "cpu", "pids"].

        The no-internal-process rule: a non-root cgroup may distribute a domain
        controller (memory, io, ...) to its children only while it has no processes of its
        own; the kernel answers EBUSY otherwise. Processes must live in leaves, so move
        them into a child first. The root cgroup is exempt.
        """
        wanted = sorted(set(names))
        missing = [n for n in wanted if n not in self.controllers()]
        if missing:
            raise CgroupError(
                "unavailable",
                f"controllers {' '.join(missing)} are not available in {self.path}; "
                "enable them in the parent's cgroup.subtree_control (or they are bound to "
                "cgroup v1)",
            )
        try:
            self.write("cgroup.subtree_control", " ".join("+" + n for n in wanted))
        except CgroupError as e:
            if e.errno == errno.EBUSY:
                raise CgroupError(
                    "busy",
                    f"cannot enable controllers in {self.path}: it has processes "
                    "(no-internal-process rule); move them into a leaf first",
                    errno.EBUSY,
                ) from None
            raise

    def disable_controllers(self, names: Iterable[str]) -> None:
        self.write("cgroup.subtree_control", " ".join("-" + n for n in sorted(set(names))))

    # ---- limits (None means "max": no limit)

    def set_memory_high(self, value: int | None) -> None:
        self.write("memory.high", fmt_limit(value))

    def set_memory_max(self, value: int | None) -> None:
        self.write("memory.max", fmt_limit(value))

    def set_memory_low(self, value: int) -> None:
        self.write("memory.low", fmt_limit(value))

    def set_memory_min(self, value: int) -> None:
        self.write("memory.min", fmt_limit(value))

    def set_memory_swap_max(self, value: int | None) -> None:
        self.write("memory.swap.max", fmt_limit(value))

    def set_cpu_weight(self, weight: int) -> None:
        if isinstance(weight, bool) or not 1 <= weight <= 10000:
            raise CgroupError("invalid_value", f"cpu.weight must be 1..10000, not {weight!r}")
        self.write("cpu.weight", str(weight))

    def set_cpu_max(self, value: tuple[int, int] | None) -> None:
        """(quota_us, period_us) per period, or None for no CPU cap."""
        if value is None:
            self.write("cpu.max", "max")
            return
        quota, period = value
        if quota < 1000 or not 1000 <= period <= 1_000_000:
            raise CgroupError(
                "invalid_value",
                f"cpu.max needs quota >= 1000us and period 1000..1000000us, not {value!r}",
            )
        self.write("cpu.max", f"{quota} {period}")

    def set_pids_max(self, value: int | None) -> None:
        self.write("pids.max", fmt_limit(value))

    # ---- stats

    def events(self) -> dict[str, int]:
        """cgroup.events: {"populated": 0|1, "frozen": 0|1}."""
        return self.read_keyed("cgroup.events")

    def memory_events(self) -> dict[str, int]:
        """memory.events: low, high, max, oom, oom_kill, oom_group_kill, ..."""
        return self.read_keyed("memory.events")

    def memory_stat(self) -> dict[str, int]:
        return self.read_keyed("memory.stat")

    def cpu_stat(self) -> dict[str, int]:
        """cpu.stat: usage_usec, user_usec, system_usec, nr_throttled, throttled_usec, ..."""
        return self.read_keyed("cpu.stat")

    def memory_current(self) -> int:
        return int(self.read("memory.current"))

    def memory_peak(self) -> int | None:
        """memory.peak, or None on kernels without it (before 5.19)."""
        try:
            return int(self.read("memory.peak").split()[0])
        except CgroupError as e:
            if e.errno == errno.ENOENT and os.path.isdir(self.dir):
                return None
            raise

    def pids_current(self) -> int:
        return int(self.read("pids.current"))

    def pressure(self, resource: str = "memory") -> dict[str, dict[str, float]]:
        """<resource>.pressure (memory, cpu, io, irq) parsed by parse_pressure()."""
        return parse_pressure(self.read(f"{resource}.pressure"))

    # ---- processes

    def procs(self) -> list[int]:
        return [int(p) for p in self.read("cgroup.procs").split()]

    def add_process(self, pid: int) -> None:
        """Move process `pid` (all its threads) into this cgroup."""
        self.write("cgroup.procs", str(pid))

    @property
    def populated(self) -> bool:
        return self.events().get("populated", 0) == 1

    @property
    def frozen(self) -> bool:
        return self.events().get("frozen", 0) == 1

    def freeze(self) -> None:
        self.write("cgroup.freeze", "1")

    def thaw(self) -> None:
        self.write("cgroup.freeze", "0")

    def wait_frozen(self, timeout: float, frozen: bool = True) -> bool:
        """Poll cgroup.events until "frozen" equals `frozen`; False on timeout.

        Freezing is asynchronous: every task must reach the freezer trap first.
        """
        return self._wait_event("frozen", frozen, timeout)

    def wait_populated(self, populated: bool, timeout: float) -> bool:
        """Poll cgroup.events until "populated" equals `populated`; False on timeout."""
        return self._wait_event("populated", populated, timeout)

    def _wait_event(self, key: str, want: bool, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            if (self.events().get(key, 0) == 1) == want:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def kill(self) -> None:
        """SIGKILL every process in this cgroup and its descendants (cgroup.kill, 5.14+)."""
        if not self.has_file("cgroup.kill"):
            raise CgroupError(
                "unavailable",
                f"{self.path} has no cgroup.kill; the kernel needs to be 5.14 or newer",
            )
        self.write("cgroup.kill", "1")

    # ---- identity

    @property
    def inode(self) -> int:
        """st_ino of the directory: on 64-bit kernels this is the kernel cgroup id that
        bpf_get_current_cgroup_id() returns for tasks in this cgroup."""
        try:
            return os.stat(self.dir).st_ino
        except OSError as e:
            raise os_error(self.path, e, "stat") from None

    cgroup_id = inode

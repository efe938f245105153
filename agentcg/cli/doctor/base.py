"""What every check domain shares: the Check record and the host facts read once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from agentcg.kernel import btf as btfmod
from agentcg.kernel.cgroup import MOUNTINFO

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    fact: str
    source: str
    gates: tuple[str, ...]


# A domain's findings: its checks (in report order) and the features they decide.
Findings = tuple[list[Check], dict[str, bool]]


class LoadedBTF(NamedTuple):
    btf: btfmod.BTF | None
    why: str  # why it is unusable, when btf is None


@dataclass(frozen=True)
class Host:
    """The inputs of every check: mount tables, the daemon's configured cgroup root
    (None: <cgroup2 mount>/agentcg), whether the mkdir/rmdir probe may run, and the
    kernel's BTF, parsed at most once for all domains."""

    mountinfo: str
    mounts: str
    root: Path | None = None
    probe: bool = True
    btf_path: Path = btfmod.VMLINUX

    @classmethod
    def read(cls, root: Path | None = None, probe: bool = True) -> Host:
        return cls(MOUNTINFO.read_text(), Path("/proc/mounts").read_text(), root, probe)

    @cached_property
    def btf(self) -> LoadedBTF:
        try:
            return LoadedBTF(btfmod.load_vmlinux(self.btf_path), "")
        except (OSError, btfmod.BTFError) as e:
            why = (
                "kernel built without CONFIG_DEBUG_INFO_BTF"
                if isinstance(e, FileNotFoundError)
                else str(e)
            )
            return LoadedBTF(None, why)

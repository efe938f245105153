"""The daemon configuration's shape: one frozen dataclass per TOML table, holding the
built-in defaults. agentcg.core.config loads and validates a file into them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from agentcg.core.escalation import MemoryConfig
from agentcg.core.metrics import DEFAULT_TOOL_KINDS
from agentcg.core.sched import SchedConfig

MiB = 1024**2
GiB = 1024**3


@dataclass(frozen=True)
class DaemonConfig:
    root: Path = Path("/sys/fs/cgroup/agentcg")
    socket: Path = Path("/run/agentcg/agentcg.sock")
    socket_group: str | None = None
    socket_mode: int = 0o660
    state_dir: Path = Path("/var/lib/agentcg")  # private (0700), never the socket's directory
    max_frame: int = 65536
    max_connections: int = 1024
    max_connections_per_peer: int = 256  # per (uid, container): one agent cannot take all
    max_requests_per_second: int = 200  # per connection
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 10.0  # a frame once started must complete within this
    reclaim_grace_s: float = 15.0
    admin_connections: int = 16  # of max_connections, kept free for admins (agents get >= 1)
    max_sessions: int = 1024  # open sessions, all agents together
    max_calls: int = 4096  # running tool calls, all agents together
    protection_fraction: float = 0.25  # most memory.low all sessions may claim, of the budget


@dataclass(frozen=True)
class AdminConfig:
    uids: tuple[int, ...] = (0,)
    gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Priority:
    cpu_weight: int
    memory_low_fraction: float  # share of the requested memory protected by memory.low
    kill_order: int  # lower ranks give way to higher ones when a session runs short
    memory_min_fraction: float = 0.0  # share of the requested memory kept by memory.min
    # oom_score_adj of the call's processes: the kernel's OOM killer takes the highest
    # (rss + adj/1000 of the budget) first, so low priorities go before high ones and
    # every call before the agent (0).
    oom_score_adj: int = 0


@dataclass(frozen=True)
class SessionConfig:
    default_memory: int | None = None  # None: no session memory cap unless the open asks
    max_memory: int | None = None
    max_calls: int = 64
    default_pids: int = 4096
    max_per_owner: int = 32  # open sessions per (uid, container)
    # The asks of a session's calls may add up to this many times its memory budget;
    # their memory.low must fit the budget itself.
    memory_overcommit: float = 2.0
    # A session never gets more than this share of the memory available where it lives
    # (the host's, or the nearest ancestor's memory.max); without a memory ask it gets it.
    max_memory_fraction: float = 0.5
    max_pids: int = 32768
    # A call.begin may wait this long (at most) for a free slot, first come first served.
    max_wait_s: float = 300.0
    # A session whose owner is gone (no calls, its opener exited, no adopted agent, no
    # processes left in its home, no connection from its owner) for this long is
    # closed; None: never.
    orphan_grace_s: float | None = 60.0


@dataclass(frozen=True)
class CallConfig:
    memory_headroom: float = 1.25  # memory.max = memory.high * headroom
    default_memory_class: str | None = "medium"
    default_priority: str = "normal"
    default_timeout_s: float | None = None
    max_timeout_s: float = 86400.0


@dataclass(frozen=True)
class Grant:
    """Who may use a priority above call.default_priority (admins always may)."""

    uids: tuple[int, ...] = ()
    gids: tuple[int, ...] = ()
    containers: tuple[str, ...] = ()  # container labels, as peer.py reads them


@dataclass(frozen=True)
class DockerConfig:
    socket: Path | None = Path("/run/docker.sock")  # None: do not follow Docker


@dataclass(frozen=True)
class MetricsConfig:
    tool_kinds: tuple[str, ...] = DEFAULT_TOOL_KINDS  # other labels count as "other"
    reader_uids: tuple[int, ...] = ()  # may read every session's stats (the exporter)
    reader_gids: tuple[int, ...] = ()


def default_size_classes() -> Mapping[str, int]:
    return MappingProxyType({"low": 256 * MiB, "medium": 1 * GiB, "high": 4 * GiB})


def default_priorities() -> Mapping[str, Priority]:
    return MappingProxyType(
        {
            "critical": Priority(1000, 1.0, 30, memory_min_fraction=0.5, oom_score_adj=300),
            "high": Priority(400, 0.5, 20, memory_min_fraction=0.25, oom_score_adj=500),
            "normal": Priority(100, 0.0, 10, oom_score_adj=800),
            "low": Priority(25, 0.0, 0, oom_score_adj=1000),
        }
    )


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    size_classes: Mapping[str, int] = field(default_factory=default_size_classes)
    priorities: Mapping[str, Priority] = field(default_factory=default_priorities)
    session: SessionConfig = field(default_factory=SessionConfig)
    call: CallConfig = field(default_factory=CallConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    grants: Mapping[str, Grant] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def default(cls) -> Config:
        return cls()

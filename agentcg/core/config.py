"""Daemon configuration: TOML file + dotted-key overrides, strictly validated.

Every error names the offending dotted key (``config: daemon.max_frame must be ...``)
and unknown keys are rejected, because a typo in a privileged daemon's config should
stop it rather than be silently ignored.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from agentcg.core.errors import AgentcgError, ConfigError
from agentcg.core.escalation import MemoryConfig
from agentcg.core.intent import MAX_PIDS, check_int, check_number, parse_size, show, validate_name
from agentcg.core.metrics import DEFAULT_TOOL_KINDS, OTHER
from agentcg.core.sched import SchedConfig

DEFAULT_PATH = Path("/etc/agentcg/agentcg.toml")

MiB = 1024**2
GiB = 1024**3
MAX_ID = 2**32 - 2  # uid/gid 2**32-1 is (uid_t)-1, "no id"
MAX_CPU_WEIGHT = 10_000  # cgroup v2 cpu.weight range is [1, 10000]
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the terminating NUL

# Class and priority names start with a letter so they can never be mistaken for a size.
_TABLE_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}", re.ASCII)
_GROUP_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?", re.ASCII)
_OCTAL_RE = re.compile(r"(?:0o|0)?([0-7]{1,4})", re.ASCII)


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


def _default_size_classes() -> Mapping[str, int]:
    return MappingProxyType({"low": 256 * MiB, "medium": 1 * GiB, "high": 4 * GiB})


def _default_priorities() -> Mapping[str, Priority]:
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
    size_classes: Mapping[str, int] = field(default_factory=_default_size_classes)
    priorities: Mapping[str, Priority] = field(default_factory=_default_priorities)
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


# --- value checkers: (dotted key, raw value) -> validated value --------------------------

Checker = Callable[[str, Any], Any]


def _fail(key: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"config: {key} must be {what}; got {show(value)}")


def _wrap(key: str, fn: Callable[[], Any]) -> Any:
    # Reuse the protocol-side checkers but re-label their errors as config errors.
    try:
        return fn()
    except ConfigError:
        raise
    except AgentcgError as e:
        raise ConfigError(f"config: {e.message}") from None


def _int(lo: int, hi: int) -> Checker:
    return lambda key, v: _wrap(key, lambda: check_int(key, v, lo, hi))


def _seconds(lo: float, hi: float, *, lo_open: bool = True) -> Checker:
    return lambda key, v: _wrap(key, lambda: check_number(key, v, lo, hi, lo_open=lo_open))


def _fraction(key: str, v: Any) -> float:
    return _wrap(key, lambda: check_number(key, v, 0.0, 1.0, lo_open=False))


def _overcommit(key: str, v: Any) -> float:
    return _wrap(key, lambda: check_number(key, v, 1.0, 16.0, lo_open=False))


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(key, "true or false", v)
    return v


def _size(key: str, v: Any) -> int:
    return _wrap(key, lambda: parse_size(v, key))


def _abs_path(key: str, v: Any) -> Path:
    if not isinstance(v, str) or not v.startswith("/") or "\0" in v:
        raise _fail(key, "an absolute path", v)
    if ".." in PurePosixPath(v).parts:
        raise _fail(key, "an absolute path without '..'", v)
    return Path(os.path.normpath(v))


def _socket_path(key: str, v: Any) -> Path:
    p = _abs_path(key, v)
    if len(os.fsencode(p)) > SUN_PATH_MAX:
        raise _fail(key, f"at most {SUN_PATH_MAX} bytes long (the unix socket path limit)", v)
    return p


def _mode(key: str, v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0o777:
        return v
    if isinstance(v, str) and (m := _OCTAL_RE.fullmatch(v)) and int(m.group(1), 8) <= 0o777:
        return int(m.group(1), 8)
    raise ConfigError(
        f'config: {key} must be an octal int like 0o660 or "0660" (at most 0o777); got {show(v)}'
    )


def _group(key: str, v: Any) -> str:
    if not isinstance(v, str) or _GROUP_RE.fullmatch(v) is None:
        raise _fail(key, "a group name", v)
    return v


def _id_list(key: str, v: Any) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise _fail(key, "a list of numeric ids", v)
    return tuple(_int(0, MAX_ID)(f"{key}[{i}]", x) for i, x in enumerate(v))


def _share(key: str, v: Any) -> float:
    return _wrap(key, lambda: check_number(key, v, 0.0, 1.0))


def _labels(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(
        isinstance(x, str) and 0 < len(x) <= 64 and x.isascii() and x.isprintable() for x in v
    ):
        raise _fail(key, "a list of container labels (ids or names as agentcg status shows)", v)
    return tuple(v)


def _label(key: str, v: Any) -> str:
    return _wrap(key, lambda: validate_name(key, v))


def _tool_kinds(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > 64:
        raise _fail(key, "a list of at most 64 tool labels", v)
    kinds = tuple(_label(f"{key}[{i}]", x) for i, x in enumerate(v))
    if OTHER in kinds:
        raise _fail(key, f'a list without "{OTHER}" (every unlisted label counts as it)', v)
    return kinds


def _headroom(key: str, v: Any) -> float:
    return _wrap(key, lambda: check_number(key, v, 1.0, 16.0, lo_open=False))


def _name(key: str, v: Any) -> str:
    if not isinstance(v, str) or _TABLE_NAME_RE.fullmatch(v) is None:
        raise _fail(key, "a name of 1-32 characters a-z, 0-9, '_', '-' starting with a letter", v)
    return v


def _entry_name(table: str, name: str) -> str:
    # "none" is reserved: it is how an optional key such as call.default_memory_class
    # is reset, so it cannot also name a class.
    if _TABLE_NAME_RE.fullmatch(name) is None or name == "none":
        raise ConfigError(
            f"config: {table}.{show(name)}: entry names must be 1-32 characters a-z, 0-9, '_', "
            "'-' starting with a letter (and not \"none\")"
        )
    return name


def _nullable(check: Checker) -> Checker:
    # TOML has no null; "none" (or None from an override) resets an optional key.
    def checker(key: str, v: Any) -> Any:
        return None if v is None or v == "none" else check(key, v)

    return checker


_SECTIONS: dict[str, tuple[type, dict[str, Checker]]] = {
    "daemon": (
        DaemonConfig,
        {
            "root": _abs_path,
            "socket": _socket_path,
            "socket_group": _nullable(_group),
            "socket_mode": _mode,
            "state_dir": _abs_path,
            "max_frame": _int(4096, 16 * MiB),
            "max_connections": _int(1, 1_000_000),
            "max_connections_per_peer": _int(1, 1_000_000),
            "max_requests_per_second": _int(1, 1_000_000),
            "idle_timeout_s": _seconds(0.0, 7 * 86400.0),
            "frame_timeout_s": _seconds(0.0, 3600.0),
            "reclaim_grace_s": _seconds(0.0, 3600.0, lo_open=False),
            "admin_connections": _int(0, 1_000_000),
            "max_sessions": _int(1, 1_000_000),
            "max_calls": _int(1, 10_000_000),
            "protection_fraction": _fraction,
        },
    ),
    "admin": (AdminConfig, {"uids": _id_list, "gids": _id_list}),
    "session": (
        SessionConfig,
        {
            "default_memory": _nullable(_size),
            "max_memory": _nullable(_size),
            "max_calls": _int(1, 1_000_000),
            "max_wait_s": _seconds(0.0, 86400.0, lo_open=False),
            "default_pids": _int(1, MAX_PIDS),
            "max_per_owner": _int(1, 1_000_000),
            "memory_overcommit": _overcommit,
            "max_memory_fraction": _share,
            "max_pids": _int(1, MAX_PIDS),
            "orphan_grace_s": _nullable(_seconds(0.0, 7 * 86400.0, lo_open=False)),
        },
    ),
    "call": (
        CallConfig,
        {
            "memory_headroom": _headroom,
            "default_memory_class": _nullable(_name),
            "default_priority": _name,
            "default_timeout_s": _nullable(_seconds(0.0, 365 * 86400.0)),
            "max_timeout_s": _seconds(0.0, 365 * 86400.0),
        },
    ),
    "memory": (
        MemoryConfig,
        {
            "bpf": _bool,
            "step": _size,
            "thaw_room": _size,
            "recheck_s": _seconds(0.0, 10.0),
            "psi_stall_us": _int(1000, 10_000_000),
            "psi_window_us": _int(10_000, 10_000_000),
        },
    ),
    "docker": (DockerConfig, {"socket": _nullable(_socket_path)}),
    "metrics": (
        MetricsConfig,
        {"tool_kinds": _tool_kinds, "reader_uids": _id_list, "reader_gids": _id_list},
    ),
    "sched": (
        SchedConfig,
        {
            "enabled": _bool,
            "switch_all": _bool,
            "slice_us": _int(100, 1_000_000),
            "latency_slice_us": _int(100, 1_000_000),
            "batch_slice_us": _int(100, 1_000_000),
            "reload_backoff_s": _seconds(0.0, 3600.0),
            "reload_backoff_max_s": _seconds(0.0, 86400.0),
        },
    ),
}
_PRIORITY_FIELDS: dict[str, Checker] = {
    "cpu_weight": _int(1, MAX_CPU_WEIGHT),
    "memory_low_fraction": _fraction,
    "kill_order": _int(-1000, 1000),
    "memory_min_fraction": _fraction,
    "oom_score_adj": _int(-999, 1000),
}
_PRIORITY_OPTIONAL = ("memory_min_fraction", "oom_score_adj")
_GRANT_FIELDS: dict[str, Checker] = {"uids": _id_list, "gids": _id_list, "containers": _labels}
_TOP_KEYS = [*_SECTIONS, "size_classes", "priorities", "grants"]


def _unknown(key: str, allowed: Any) -> ConfigError:
    return ConfigError(f"config: unknown key {key}; allowed here: {', '.join(allowed)}")


def _table(key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(key, "a table", v)
    return v


def _build(raw: dict[str, Any]) -> Config:
    for top in raw:
        if top not in _TOP_KEYS:
            raise _unknown(top, _TOP_KEYS)

    sections: dict[str, Any] = {}
    for name, (cls, checkers) in _SECTIONS.items():
        table = _table(name, raw.get(name, {}))
        for key in table:
            if key not in checkers:
                raise _unknown(f"{name}.{key}", checkers)
        sections[name] = cls(**{k: checkers[k](f"{name}.{k}", v) for k, v in table.items()})

    # Tables of named entries: a named entry is added or replaces the built-in one.
    classes = dict(_default_size_classes())
    for cname, v in _table("size_classes", raw.get("size_classes", {})).items():
        classes[_entry_name("size_classes", cname)] = _size(f"size_classes.{cname}", v)

    priorities = dict(_default_priorities())
    for pname, v in _table("priorities", raw.get("priorities", {})).items():
        key = f"priorities.{_entry_name('priorities', pname)}"
        entry = _table(key, v)
        for f in entry:
            if f not in _PRIORITY_FIELDS:
                raise _unknown(f"{key}.{f}", _PRIORITY_FIELDS)
        required = [f for f in _PRIORITY_FIELDS if f not in _PRIORITY_OPTIONAL]
        missing = [f for f in required if f not in entry]
        if missing:
            raise ConfigError(
                f"config: {key}.{missing[0]} is required (each priority sets all of "
                f"{', '.join(required)})"
            )
        priorities[pname] = Priority(
            **{f: c(f"{key}.{f}", entry[f]) for f, c in _PRIORITY_FIELDS.items() if f in entry}
        )

    grants = {}
    for gname, v in _table("grants", raw.get("grants", {})).items():
        key = f"grants.{_entry_name('grants', gname)}"
        if gname not in priorities:
            raise ConfigError(
                f"config: {key} names no priority; use one of {', '.join(sorted(priorities))}"
            )
        entry = _table(key, v)
        for f in entry:
            if f not in _GRANT_FIELDS:
                raise _unknown(f"{key}.{f}", _GRANT_FIELDS)
        grant = Grant(**{f: _GRANT_FIELDS[f](f"{key}.{f}", x) for f, x in entry.items()})
        if grant != Grant():
            grants[gname] = grant

    cfg = Config(
        size_classes=MappingProxyType(classes),
        priorities=MappingProxyType(priorities),
        grants=MappingProxyType(grants),
        **sections,
    )
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config) -> None:
    s, c = cfg.session, cfg.call
    for name, prio in cfg.priorities.items():
        if prio.memory_min_fraction > prio.memory_low_fraction:
            raise ConfigError(
                f"config: priorities.{name}.memory_min_fraction ({prio.memory_min_fraction:g}) "
                f"is above its memory_low_fraction ({prio.memory_low_fraction:g}); "
                "memory.min is the hard part of memory.low"
            )
    if s.default_memory and s.max_memory and s.default_memory > s.max_memory:
        raise ConfigError(
            f"config: session.default_memory ({s.default_memory} bytes) is above "
            f"session.max_memory ({s.max_memory} bytes); lower one or raise the other"
        )
    if c.default_memory_class is not None and c.default_memory_class not in cfg.size_classes:
        raise ConfigError(
            f"config: call.default_memory_class {c.default_memory_class!r} is not a size class; "
            f"define size_classes.{c.default_memory_class} or use one of "
            f"{', '.join(sorted(cfg.size_classes))}"
        )
    if c.default_priority not in cfg.priorities:
        raise ConfigError(
            f"config: call.default_priority {c.default_priority!r} is not defined; define "
            f"priorities.{c.default_priority} or use one of {', '.join(sorted(cfg.priorities))}"
        )
    if s.default_pids > s.max_pids:
        raise ConfigError(
            f"config: session.default_pids ({s.default_pids}) is above session.max_pids "
            f"({s.max_pids})"
        )
    if c.default_timeout_s is not None and c.default_timeout_s > c.max_timeout_s:
        raise ConfigError(
            f"config: call.default_timeout_s ({c.default_timeout_s:g}) is above "
            f"call.max_timeout_s ({c.max_timeout_s:g})"
        )


def _apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".") if isinstance(dotted, str) else []
    if not parts or not all(parts):
        raise ConfigError(
            f"config: override key {show(dotted)} is not a dotted key like daemon.socket"
        )
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(
                f"config: {'.'.join(parts[: i + 1])} is not a table; cannot set {dotted}"
            )
        node = nxt
    node[parts[-1]] = value


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load and validate the config.

    ``path`` None means DEFAULT_PATH if it exists, else built-in defaults; an explicit
    path must exist. ``overrides`` maps dotted keys ("daemon.socket") to values
    (e.g. from CLI flags) and wins over the file; None values are skipped.
    """
    raw: dict[str, Any] = {}
    if path is None and DEFAULT_PATH.exists():
        path = DEFAULT_PATH
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"config: cannot read {path}: {e.strerror or e}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
    for dotted, value in (overrides or {}).items():
        # None means "flag not given" so a CLI can pass all its options unconditionally;
        # resetting an optional key is spelled "none".
        if value is not None:
            _apply_override(raw, dotted, value)
    return _build(raw)

"""Daemon configuration: TOML file + dotted-key overrides, strictly validated.

Every error names the offending dotted key (``config: daemon.max_frame must be ...``)
and unknown keys are rejected, because a typo in a privileged daemon's config should
stop it rather than be silently ignored.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agentcg.core import config_checks as check
from agentcg.core.config_sections import (
    AdminConfig,
    CallConfig,
    Config,
    DaemonConfig,
    DockerConfig,
    Grant,
    MetricsConfig,
    MiB,
    Priority,
    SessionConfig,
    default_priorities,
    default_size_classes,
)
from agentcg.core.errors import ConfigError
from agentcg.core.escalation import MemoryConfig
from agentcg.core.intent import MAX_PIDS, show
from agentcg.core.sched import SchedConfig

__all__ = [
    "DEFAULT_PATH",
    "AdminConfig",
    "CallConfig",
    "Config",
    "DaemonConfig",
    "DockerConfig",
    "Grant",
    "MetricsConfig",
    "Priority",
    "SessionConfig",
    "load_config",
]

DEFAULT_PATH = Path("/etc/agentcg/agentcg.toml")
MAX_CPU_WEIGHT = 10_000  # cgroup v2 cpu.weight range is [1, 10000]

# The tables: each key of a section and the checker of its value.
_SECTIONS: dict[str, tuple[type, dict[str, check.Checker]]] = {
    "daemon": (
        DaemonConfig,
        {
            "root": check.abs_path,
            "socket": check.socket_path,
            "socket_group": check.nullable(check.group),
            "socket_mode": check.mode,
            "state_dir": check.abs_path,
            "max_frame": check.integer(4096, 16 * MiB),
            "max_connections": check.integer(1, 1_000_000),
            "max_connections_per_peer": check.integer(1, 1_000_000),
            "max_requests_per_second": check.integer(1, 1_000_000),
            "idle_timeout_s": check.seconds(0.0, 7 * 86400.0),
            "frame_timeout_s": check.seconds(0.0, 3600.0),
            "reclaim_grace_s": check.seconds(0.0, 3600.0, lo_open=False),
            "admin_connections": check.integer(0, 1_000_000),
            "max_sessions": check.integer(1, 1_000_000),
            "max_calls": check.integer(1, 10_000_000),
            "protection_fraction": check.fraction,
        },
    ),
    "admin": (AdminConfig, {"uids": check.id_list, "gids": check.id_list}),
    "session": (
        SessionConfig,
        {
            "default_memory": check.nullable(check.size),
            "max_memory": check.nullable(check.size),
            "max_calls": check.integer(1, 1_000_000),
            "max_wait_s": check.seconds(0.0, 86400.0, lo_open=False),
            "default_pids": check.integer(1, MAX_PIDS),
            "max_per_owner": check.integer(1, 1_000_000),
            "memory_overcommit": check.overcommit,
            "max_memory_fraction": check.share,
            "max_pids": check.integer(1, MAX_PIDS),
            "orphan_grace_s": check.nullable(check.seconds(0.0, 7 * 86400.0, lo_open=False)),
        },
    ),
    "call": (
        CallConfig,
        {
            "memory_headroom": check.headroom,
            "default_memory_class": check.nullable(check.name),
            "default_priority": check.name,
            "default_timeout_s": check.nullable(check.seconds(0.0, 365 * 86400.0)),
            "max_timeout_s": check.seconds(0.0, 365 * 86400.0),
        },
    ),
    "memory": (
        MemoryConfig,
        {
            "bpf": check.boolean,
            "step": check.size,
            "thaw_room": check.size,
            "recheck_s": check.seconds(0.0, 10.0),
            "recheck_max_s": check.seconds(0.0, 60.0),
            "reserve": check.choice("growth", "ask"),
            "reserve_horizon_s": check.seconds(0.0, 600.0),
            "psi_stall_us": check.integer(1000, 10_000_000),
            "psi_window_us": check.integer(10_000, 10_000_000),
        },
    ),
    "docker": (DockerConfig, {"socket": check.nullable(check.socket_path)}),
    "metrics": (
        MetricsConfig,
        {
            "tool_kinds": check.tool_kinds,
            "reader_uids": check.id_list,
            "reader_gids": check.id_list,
        },
    ),
    "sched": (
        SchedConfig,
        {
            "enabled": check.boolean,
            "switch_all": check.boolean,
            "slice_us": check.integer(100, 1_000_000),
            "latency_slice_us": check.integer(100, 1_000_000),
            "batch_slice_us": check.integer(100, 1_000_000),
            "reload_backoff_s": check.seconds(0.0, 3600.0),
            "reload_backoff_max_s": check.seconds(0.0, 86400.0),
        },
    ),
}
_PRIORITY_FIELDS: dict[str, check.Checker] = {
    "cpu_weight": check.integer(1, MAX_CPU_WEIGHT),
    "memory_low_fraction": check.fraction,
    "kill_order": check.integer(-1000, 1000),
    "memory_min_fraction": check.fraction,
    "oom_score_adj": check.integer(-999, 1000),
}
_PRIORITY_OPTIONAL = ("memory_min_fraction", "oom_score_adj")
_GRANT_FIELDS: dict[str, check.Checker] = {
    "uids": check.id_list,
    "gids": check.id_list,
    "containers": check.labels,
}
_TOP_KEYS = [*_SECTIONS, "size_classes", "priorities", "grants"]


def _build(raw: dict[str, Any]) -> Config:
    for top in raw:
        if top not in _TOP_KEYS:
            raise check.unknown(top, _TOP_KEYS)

    sections: dict[str, Any] = {}
    for name, (cls, checkers) in _SECTIONS.items():
        table = check.table(name, raw.get(name, {}))
        for key in table:
            if key not in checkers:
                raise check.unknown(f"{name}.{key}", checkers)
        sections[name] = cls(**{k: checkers[k](f"{name}.{k}", v) for k, v in table.items()})

    # Tables of named entries: a named entry is added or replaces the built-in one.
    classes = dict(default_size_classes())
    for cname, v in check.table("size_classes", raw.get("size_classes", {})).items():
        classes[check.entry_name("size_classes", cname)] = check.size(f"size_classes.{cname}", v)

    priorities = dict(default_priorities())
    for pname, v in check.table("priorities", raw.get("priorities", {})).items():
        key = f"priorities.{check.entry_name('priorities', pname)}"
        entry = check.table(key, v)
        for f in entry:
            if f not in _PRIORITY_FIELDS:
                raise check.unknown(f"{key}.{f}", _PRIORITY_FIELDS)
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
    for gname, v in check.table("grants", raw.get("grants", {})).items():
        key = f"grants.{check.entry_name('grants', gname)}"
        if gname not in priorities:
            raise ConfigError(
                f"config: {key} names no priority; use one of {', '.join(sorted(priorities))}"
            )
        entry = check.table(key, v)
        for f in entry:
            if f not in _GRANT_FIELDS:
                raise check.unknown(f"{key}.{f}", _GRANT_FIELDS)
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

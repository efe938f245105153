"""What an agent declares before a tool call, parsed and validated.

An Intent records only what the agent said (plus size classes resolved to bytes);
defaults from the config are applied later by policy.decide(), so advice can tell an
undeclared call from a declared one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agentcg.core.errors import AgentcgError

if TYPE_CHECKING:
    from agentcg.core.config import Config

MAX_SIZE = 2**50  # 1 PiB: beyond any real host; also keeps arithmetic well inside int64.
MAX_CPU = 4096.0  # cores; generous bound that still catches unit mistakes (millicores).
MAX_PIDS = 4_194_304  # the kernel's PID_MAX_LIMIT on 64-bit.

# Session names and labels become cgroup directory names and metric labels, so they
# must be path-safe: no '/', cannot start with '.', bounded length. ASCII only (re.A)
# so that look-alike Unicode cannot create confusable names.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}", re.ASCII)

_SIZE_RE = re.compile(
    r"\s*(?P<num>[0-9]{1,16}(?:\.[0-9]{1,9})?)\s*(?P<unit>[kmgtp]?i?b?)\s*", re.ASCII | re.I
)
_IEC = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}

INTENT_KEYS = frozenset(
    {"memory", "priority", "latency_sensitive", "cpu", "pids", "timeout", "label"}
)


def show(value: Any, limit: int = 60) -> str:
    """repr() of a peer-supplied value, bounded so it is safe to put in a one-line message."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def validate_name(kind: str, value: Any) -> str:
    """Return ``value`` if it is a valid session name or label, else raise invalid_value."""
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        raise AgentcgError(
            "invalid_value",
            f"{kind} {show(value)} is not a valid name: use 1-63 characters of a-z, 0-9, "
            "'_', '.', '-', starting with a letter or digit",
        )
    return value


def parse_size(value: Any, what: str = "size") -> int:
    """Parse a memory size to bytes.

    Accepts a positive int (bytes) or a string: plain bytes ("4096", "4096B"), IEC
    multiples K/M/G/T/P or KiB/MiB/... (1024^n) and decimal KB/MB/GB/TB/PB (1000^n),
    case-insensitive, fractions allowed with a unit ("1.5G"). Fractional bytes round up.
    Rejects bools, floats, zero, negatives, junk and anything above 1 PiB.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise AgentcgError(
            "invalid_value",
            f'{what} must be an integer number of bytes or a string like "512M"; '
            f"got {type(value).__name__} {show(value)}",
        )
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.fullmatch(value)
        unit = m.group("unit").lower() if m else ""
        if m is None or unit.startswith("i"):
            raise AgentcgError(
                "invalid_value",
                f"{what} {show(value)} is not a size: use bytes or a number with K/M/G/T "
                '(1024-based, e.g. "512M", "1.5GiB") or KB/MB/GB/TB (1000-based)',
            )
        if unit in ("", "b"):
            scale = 1
        else:
            # "M", "Mi", "MiB" are 1024-based; only a bare "MB" is 1000-based.
            base = 1000 if unit[1:] == "b" else 1024
            scale = base ** _IEC[unit[0]]
        num = Decimal(m.group("num"))
        if scale == 1 and num != num.to_integral_value():
            raise AgentcgError(
                "invalid_value", f"{what} {show(value)} has a fractional number of bytes"
            )
        n = math.ceil(num * scale)
    if n <= 0:
        raise AgentcgError("invalid_value", f"{what} must be positive; got {show(value)}")
    if n > MAX_SIZE:
        raise AgentcgError("invalid_value", f"{what} {show(value)} is larger than 1 PiB")
    return n


def check_int(what: str, value: Any, lo: int, hi: int) -> int:
    """An int in [lo, hi]; bools are rejected even though bool subclasses int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AgentcgError(
            "invalid_value", f"{what} must be an integer; got {type(value).__name__} {show(value)}"
        )
    if not lo <= value <= hi:
        raise AgentcgError("invalid_value", f"{what} must be between {lo} and {hi}; got {value}")
    return value


def check_number(what: str, value: Any, lo: float, hi: float, *, lo_open: bool = True) -> float:
    """A finite int or float in (lo, hi] (or [lo, hi] with lo_open=False), as float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AgentcgError(
            "invalid_value", f"{what} must be a number; got {type(value).__name__} {show(value)}"
        )
    v = float(value)
    low_ok = v > lo if lo_open else v >= lo
    if not (math.isfinite(v) and low_ok and v <= hi):
        bound = f"greater than {lo:g}" if lo_open else f"at least {lo:g}"
        raise AgentcgError("invalid_value", f"{what} must be {bound} and at most {hi:g}; got {v!r}")
    return v


def check_bool(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise AgentcgError(
            "invalid_value",
            f"{what} must be true or false; got {type(value).__name__} {show(value)}",
        )
    return value


@dataclass(frozen=True)
class Intent:
    memory: int | None  # bytes the call expects to need (memory.high); None = undeclared
    memory_class: str | None  # size class name when memory was given as one
    priority: str
    latency_sensitive: bool
    cpu: float | None  # cores
    pids: int | None
    timeout: float | None  # seconds
    label: str


def parse_intent(d: Any, cfg: Config) -> Intent:
    """Validate a call.begin ``intent`` object against the config."""
    if not isinstance(d, dict):
        raise AgentcgError(
            "invalid_value", f"intent must be an object; got {type(d).__name__} {show(d)}"
        )
    unknown = sorted(set(d) - INTENT_KEYS, key=str)
    if unknown:
        raise AgentcgError(
            "unknown_field",
            f"intent has unknown field {show(unknown[0])}; "
            f"allowed: {', '.join(sorted(INTENT_KEYS))}",
        )

    # An explicit null means "not given", for every optional key.
    def get(key: str, default: Any = None) -> Any:
        v = d.get(key)
        return default if v is None else v

    memory: int | None = None
    memory_class: str | None = None
    raw = get("memory")
    if raw is not None:
        if isinstance(raw, str) and raw in cfg.size_classes:
            memory, memory_class = cfg.size_classes[raw], raw
        elif isinstance(raw, str) and raw[:1].isalpha():
            classes = ", ".join(sorted(cfg.size_classes))
            raise AgentcgError(
                "invalid_value",
                f"intent.memory {show(raw)} is neither a size class ({classes}) nor a size "
                'like "512M"',
            )
        else:
            memory = parse_size(raw, "intent.memory")

    priority = get("priority", cfg.call.default_priority)
    if not isinstance(priority, str) or priority not in cfg.priorities:
        raise AgentcgError(
            "invalid_value",
            f"intent.priority {show(priority)} is not one of: {', '.join(sorted(cfg.priorities))}",
        )

    def opt(key: str, check: Any, *bounds: Any) -> Any:
        v = get(key)
        return None if v is None else check(f"intent.{key}", v, *bounds)

    return Intent(
        memory=memory,
        memory_class=memory_class,
        priority=priority,
        latency_sensitive=check_bool("intent.latency_sensitive", get("latency_sensitive", False)),
        cpu=opt("cpu", check_number, 0.0, MAX_CPU),
        pids=opt("pids", check_int, 1, MAX_PIDS),
        timeout=opt("timeout", check_number, 0.0, float(cfg.call.max_timeout_s)),
        label=validate_name("intent.label", get("label", "tool")),
    )

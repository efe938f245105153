"""What a valid state record looks like: checked on load, before recovery trusts it.

Recovery rebuilds owners, tokens and cgroup paths from these records, and session
close writes pids into paths taken from them, so a record is used only if every
field has the type and range the daemon itself writes, names are names (a session
name or call id becomes a directory under the daemon's root) and cgroup paths are
plain absolute paths inside the cgroup mount (no '..', nothing that could leave it).
``check_record`` returns the reason a record is rejected, or None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from agentcg.core.intent import MAX_CPU, MAX_PIDS, MAX_SIZE, NAME_RE
from agentcg.core.protocol import CALL_ID_RE, TOKEN_RE

MAX_ID = 2**32 - 2
MAX_PATH = 4096

Check = Callable[[Any], bool]


def _int(lo: int, hi: int) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _num(lo: float, hi: float) -> Check:
    return lambda v: (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and lo <= v <= hi
    )


def _opt(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _name(v: Any) -> bool:
    return isinstance(v, str) and NAME_RE.fullmatch(v) is not None


def _label(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 64 and v.isascii() and v.isprintable()


def cgroup_path_ok(v: Any) -> bool:
    """An absolute cgroup path relative to the cgroup2 mount, e.g. "/docker/<id>"."""
    if not isinstance(v, str) or not v.startswith("/") or len(v) > MAX_PATH:
        return False
    if v == "/":
        return True
    parts = v[1:].split("/")
    return all(p not in ("", ".", "..") and "\0" not in p and "\n" not in p for p in parts)


def _adopted(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and k.isdigit() and 0 < int(k) <= MAX_PIDS and cgroup_path_ok(o)
        for k, o in v.items()
    )


def _cpu_max(v: Any) -> bool:
    return v is None or (
        isinstance(v, list) and len(v) == 2 and _int(1000, 2**40)(v[0]) and _int(1000, 10**6)(v[1])
    )


SIZE = _opt(_int(1, MAX_SIZE))
TIME = _num(0.0, 2**40)

SESSION: dict[str, Check] = {
    "name": _name,
    "owner_uid": _opt(_int(0, MAX_ID)),
    "container": _opt(_label),
    "memory": SIZE,
    "cpu": _opt(_num(1e-3, MAX_CPU)),
    "pids": _opt(_int(1, MAX_PIDS)),
    "max_calls": _int(1, 1_000_000),
    "created": TIME,
    "adopted": _adopted,
    "home": _opt(cgroup_path_ok),  # the caller's cgroup it nests under; None: daemon root
    "default": lambda v: isinstance(v, bool),
    "limit": SIZE,
    "owner_pid": _opt(_int(1, MAX_PIDS)),
    "owner_start": _opt(_int(0, 2**63)),
}
SESSION_OPTIONAL = frozenset({"home", "default", "limit", "owner_pid", "owner_start"})

INTENT: dict[str, Check] = {
    "memory": SIZE,
    "memory_class": _opt(_name),
    "priority": _name,
    "latency_sensitive": lambda v: isinstance(v, bool),
    "cpu": _opt(_num(1e-3, MAX_CPU)),
    "pids": _opt(_int(1, MAX_PIDS)),
    "timeout": _opt(_num(0.0, 2**40)),
    "label": _name,
}

LIMITS: dict[str, Check] = {
    "memory_high": SIZE,
    "memory_max": SIZE,
    "memory_low": _int(0, MAX_SIZE),
    "cpu_weight": _int(1, 10_000),
    "cpu_max": _cpu_max,
    "pids_max": _opt(_int(1, MAX_PIDS)),
    "timeout_s": _opt(_num(0.0, 2**40)),
    "memory_min": _int(0, MAX_SIZE),
}
LIMITS_OPTIONAL = frozenset({"memory_min"})


def _fields(what: str, rec: Any, schema: dict[str, Check], optional: frozenset[str]) -> str | None:
    if not isinstance(rec, dict):
        return f"{what} is not an object"
    unknown = sorted(set(rec) - set(schema))
    if unknown:
        return f"{what} has unknown field {unknown[0]!r}"
    for key, check in schema.items():
        if key not in rec:
            if key in optional:
                continue
            return f"{what} lacks {key!r}"
        if not check(rec[key]):
            return f"{what} field {key!r} is invalid"
    return None


def _call(name: str, rec: Any) -> str | None:
    if CALL_ID_RE.fullmatch(name) is None:
        return "not a call id"
    schema: dict[str, Check] = {
        "session": _name,
        "token": lambda v: isinstance(v, str) and TOKEN_RE.fullmatch(v) is not None,
        "owner_uid": _int(0, MAX_ID),
        "owner_pid": _int(1, MAX_PIDS),
        "intent": lambda v: True,
        "limits": lambda v: True,
        "started": TIME,
    }
    return (
        _fields("call record", rec, schema, frozenset())
        or _fields("call intent", rec["intent"], INTENT, frozenset())
        or _fields("call limits", rec["limits"], LIMITS, LIMITS_OPTIONAL)
    )


def _session(name: str, rec: Any) -> str | None:
    reason = _fields("session record", rec, SESSION, SESSION_OPTIONAL)
    if reason is None and rec["name"] != name:
        return f"names session {rec['name']!r} but is filed as {name!r}"
    return reason


def _anchor(name: str, rec: Any) -> str | None:
    return _fields("anchor record", rec, {"path": cgroup_path_ok}, frozenset())


_KINDS: dict[str, Callable[[str, Any], str | None]] = {
    "sessions": _session,
    "calls": _call,
    "anchors": _anchor,
}


def check_record(kind: str, name: str, rec: Any) -> str | None:
    """Why the record `name` of `kind` cannot be trusted, or None if it can."""
    check = _KINDS.get(kind)
    if check is None:
        return f"unknown record kind {kind!r}"
    return check(name, rec)

"""Value checkers of the daemon configuration: (dotted key, raw value) -> validated
value. Each error names the key (``config: daemon.max_frame must be ...``); the
protocol's own checkers (agentcg.core.intent) are reused with their errors re-labelled.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from agentcg.core.errors import AgentcgError, ConfigError
from agentcg.core.intent import check_int, check_number, parse_size, show, validate_name
from agentcg.core.metrics import OTHER

MAX_ID = 2**32 - 2  # uid/gid 2**32-1 is (uid_t)-1, "no id"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the terminating NUL

# Class and priority names start with a letter so they can never be mistaken for a size.
_TABLE_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}", re.ASCII)
_GROUP_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?", re.ASCII)
_OCTAL_RE = re.compile(r"(?:0o|0)?([0-7]{1,4})", re.ASCII)

Checker = Callable[[str, Any], Any]


def fail(key: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"config: {key} must be {what}; got {show(value)}")


def _wrap(key: str, fn: Callable[[], Any]) -> Any:
    # Reuse the protocol-side checkers but re-label their errors as config errors.
    try:
        return fn()
    except ConfigError:
        raise
    except AgentcgError as e:
        raise ConfigError(f"config: {e.message}") from None


def integer(lo: int, hi: int) -> Checker:
    return lambda key, v: _wrap(key, lambda: check_int(key, v, lo, hi))


def choice(*options: str) -> Checker:
    def checker(key: str, v: Any) -> str:
        if v not in options:
            raise fail(key, "one of " + ", ".join(f'"{o}"' for o in options), v)
        return str(v)

    return checker


def seconds(lo: float, hi: float, *, lo_open: bool = True) -> Checker:
    return lambda key, v: _wrap(key, lambda: check_number(key, v, lo, hi, lo_open=lo_open))


def fraction(key: str, v: Any) -> float:
    return _wrap(key, lambda: check_number(key, v, 0.0, 1.0, lo_open=False))


def overcommit(key: str, v: Any) -> float:
    return _wrap(key, lambda: check_number(key, v, 1.0, 16.0, lo_open=False))


def boolean(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise fail(key, "true or false", v)
    return v


def size(key: str, v: Any) -> int:
    return _wrap(key, lambda: parse_size(v, key))


def abs_path(key: str, v: Any) -> Path:
    if not isinstance(v, str) or not v.startswith("/") or "\0" in v:
        raise fail(key, "an absolute path", v)
    if ".." in PurePosixPath(v).parts:
        raise fail(key, "an absolute path without '..'", v)
    return Path(os.path.normpath(v))


def socket_path(key: str, v: Any) -> Path:
    p = abs_path(key, v)
    if len(os.fsencode(p)) > SUN_PATH_MAX:
        raise fail(key, f"at most {SUN_PATH_MAX} bytes long (the unix socket path limit)", v)
    return p


def mode(key: str, v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0o777:
        return v
    if isinstance(v, str) and (m := _OCTAL_RE.fullmatch(v)) and int(m.group(1), 8) <= 0o777:
        return int(m.group(1), 8)
    raise ConfigError(
        f'config: {key} must be an octal int like 0o660 or "0660" (at most 0o777); got {show(v)}'
    )


def group(key: str, v: Any) -> str:
    if not isinstance(v, str) or _GROUP_RE.fullmatch(v) is None:
        raise fail(key, "a group name", v)
    return v


def id_list(key: str, v: Any) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise fail(key, "a list of numeric ids", v)
    return tuple(integer(0, MAX_ID)(f"{key}[{i}]", x) for i, x in enumerate(v))


def share(key: str, v: Any) -> float:
    return _wrap(key, lambda: check_number(key, v, 0.0, 1.0))


def labels(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(
        isinstance(x, str) and 0 < len(x) <= 64 and x.isascii() and x.isprintable() for x in v
    ):
        raise fail(key, "a list of container labels (ids or names as agentcg status shows)", v)
    return tuple(v)


def _label(key: str, v: Any) -> str:
    return _wrap(key, lambda: validate_name(key, v))


def tool_kinds(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > 64:
        raise fail(key, "a list of at most 64 tool labels", v)
    kinds = tuple(_label(f"{key}[{i}]", x) for i, x in enumerate(v))
    if OTHER in kinds:
        raise fail(key, f'a list without "{OTHER}" (every unlisted label counts as it)', v)
    return kinds


def headroom(key: str, v: Any) -> float:
    return _wrap(key, lambda: check_number(key, v, 1.0, 16.0, lo_open=False))


def name(key: str, v: Any) -> str:
    if not isinstance(v, str) or _TABLE_NAME_RE.fullmatch(v) is None:
        raise fail(key, "a name of 1-32 characters a-z, 0-9, '_', '-' starting with a letter", v)
    return v


def entry_name(table: str, name: str) -> str:
    # "none" is reserved: it is how an optional key such as call.default_memory_class
    # is reset, so it cannot also name a class.
    if _TABLE_NAME_RE.fullmatch(name) is None or name == "none":
        raise ConfigError(
            f"config: {table}.{show(name)}: entry names must be 1-32 characters a-z, 0-9, '_', "
            "'-' starting with a letter (and not \"none\")"
        )
    return name


def nullable(check: Checker) -> Checker:
    # TOML has no null; "none" (or None from an override) resets an optional key.
    def checker(key: str, v: Any) -> Any:
        return None if v is None or v == "none" else check(key, v)

    return checker


def unknown(key: str, allowed: Any) -> ConfigError:
    return ConfigError(f"config: unknown key {key}; allowed here: {', '.join(allowed)}")


def table(key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise fail(key, "a table", v)
    return v

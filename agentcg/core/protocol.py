"""Wire protocol v1: newline-delimited JSON over a unix stream socket.

This module is pure: it turns bytes into validated Request objects and dicts into
bytes. Everything a peer sends is validated here (frame size, UTF-8, JSON, envelope
keys, op, per-op argument schema) before the daemon looks at it. The full description
is docs/protocol.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentcg.core.errors import AgentcgError
from agentcg.core.intent import (
    MAX_CPU,
    MAX_PIDS,
    check_bool,
    check_int,
    check_number,
    parse_size,
    show,
    validate_name,
)

__all__ = [
    "EVENTS",
    "OPS",
    "PROTOCOL_VERSION",
    "ArgSpec",
    "OpSpec",
    "Request",
    "decode",
    "encode",
    "err",
    "event",
    "negotiate_version",
    "ok",
    "parse_request",
    "validate_name",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 65536
MAX_ID_LEN = 64
MAX_INT_ID = 2**63 - 1
MAX_CLIENT_LEN = 128
MAX_WAIT_S = 86400.0  # call.begin wait_s; the daemon caps it at session.max_wait_s

EVENTS = frozenset(
    {
        "limit_raised",
        "throttled",
        "released",
        "frozen",
        "thawed",
        "killed",
        "oom",
        "ended",
        "waiting",
    }
)
ENVELOPE_KEYS = frozenset({"v", "id", "op", "args"})

CALL_ID_RE = re.compile(r"c[0-9a-f]{12}", re.ASCII)
TOKEN_RE = re.compile(r"[0-9a-f]{32}", re.ASCII)

# Exit status as reported by the client: >= 0 is the exit code, < 0 is -signal number.
MIN_EXIT_STATUS = -64  # SIGRTMAX on Linux
MAX_EXIT_STATUS = 255
MAX_PID = 4_194_304  # the kernel's PID_MAX_LIMIT on 64-bit


# --- argument checkers: (dotted name, raw value) -> validated value ---------------------

Check = Callable[[str, Any], Any]


def _str(max_len: int) -> Check:
    def check(what: str, v: Any) -> str:
        if not isinstance(v, str):
            raise AgentcgError(
                "invalid_value", f"{what} must be a string; got {type(v).__name__} {show(v)}"
            )
        if len(v) > max_len or not v.isprintable():
            raise AgentcgError(
                "invalid_value", f"{what} must be at most {max_len} printable characters"
            )
        return v

    return check


def _pattern(regex: re.Pattern[str], desc: str) -> Check:
    def check(what: str, v: Any) -> str:
        if not isinstance(v, str) or regex.fullmatch(v) is None:
            raise AgentcgError("invalid_value", f"{what} must be {desc}; got {show(v)}")
        return v

    return check


def _int(lo: int, hi: int) -> Check:
    return lambda what, v: check_int(what, v, lo, hi)


def _object(what: str, v: Any) -> dict[str, Any]:
    # Contents are validated by the op's own parser (intent.parse_intent for call.begin).
    if not isinstance(v, dict):
        raise AgentcgError(
            "invalid_value", f"{what} must be an object; got {type(v).__name__} {show(v)}"
        )
    return v


_session: Check = validate_name
_call_id = _pattern(CALL_ID_RE, 'a call id like "c0123456789ab" (from call.begin)')
_token = _pattern(TOKEN_RE, "the 32-hex-digit token returned by call.begin")


@dataclass(frozen=True)
class ArgSpec:
    check: Check
    required: bool = False


@dataclass(frozen=True)
class OpSpec:
    args: Mapping[str, ArgSpec]
    admin: bool = False  # needs a uid/gid listed in [admin]


def _spec(admin: bool = False, **args: ArgSpec) -> OpSpec:
    return OpSpec(args=args, admin=admin)


def _req(check: Check) -> ArgSpec:
    return ArgSpec(check, required=True)


def _opt(check: Check) -> ArgSpec:
    return ArgSpec(check)


# The op schema table. Size arguments are normalised to bytes by parse_request.
OPS: Mapping[str, OpSpec] = {
    "hello": _spec(
        version=_req(_int(1, 2**31 - 1)),
        client=_opt(_str(MAX_CLIENT_LEN)),
    ),
    "session.open": _spec(
        name=_opt(_session),
        memory=_opt(lambda what, v: parse_size(v, what)),
        cpu=_opt(lambda what, v: check_number(what, v, 0.0, MAX_CPU)),
        pids=_opt(_int(1, MAX_PIDS)),
        max_calls=_opt(_int(1, 1_000_000)),
        adopt=_opt(check_bool),
    ),
    "session.close": _spec(session=_req(_session)),
    "session.status": _spec(session=_req(_session)),
    "call.begin": _spec(
        session=_opt(_session),
        intent=_req(_object),
        wait_s=_opt(lambda what, v: check_number(what, v, 0.0, MAX_WAIT_S, lo_open=False)),
        pid=_opt(_int(1, MAX_PID)),  # a waiting child to attach at once (as call.attach)
    ),
    "call.attach": _spec(call=_req(_call_id), token=_req(_token), pid=_opt(_int(1, MAX_PID))),
    "call.end": _spec(
        call=_req(_call_id),
        token=_req(_token),
        exit_status=_opt(_int(MIN_EXIT_STATUS, MAX_EXIT_STATUS)),
    ),
    "call.status": _spec(call=_req(_call_id)),
    "call.claim": _spec(call=_req(_call_id), token=_req(_token)),
    "list": _spec(admin=True),
    # Counters and usage for metrics and `agentcg top`: every session for admins and
    # metrics readers, the peer's own sessions otherwise (docs/metrics.md).
    "stats": _spec(session=_opt(_session)),
}


@dataclass(frozen=True)
class Request:
    id: int | str
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    version: int | None = None  # the envelope's "v", None when omitted

    @property
    def spec(self) -> OpSpec:
        return OPS[self.op]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys would let two parsers (ours, a proxy's, a log reader's) disagree
    # about what a request says.
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {show(k)}")
        d[k] = v
    return d


def decode(line: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> dict[str, Any]:
    """Decode one frame (with or without its trailing newline) into a JSON object.

    Used by both sides: the server via parse_request, the client for responses/events.
    """
    size = len(line) + (0 if line.endswith(b"\n") else 1)
    if size > max_frame:
        raise AgentcgError(
            "frame_too_large",
            f"frame of {size} bytes exceeds the {max_frame}-byte limit; send smaller requests",
        )
    body = line[:-1] if line.endswith(b"\n") else line
    if body.endswith(b"\r"):
        body = body[:-1]
    if b"\n" in body or not body.strip():
        raise AgentcgError("bad_frame", "a frame is exactly one non-empty JSON line")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise AgentcgError("bad_frame", "frame is not valid UTF-8") from None
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except RecursionError:
        raise AgentcgError("bad_json", "JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError is a ValueError; so are our hook errors
        raise AgentcgError("bad_json", f"invalid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise AgentcgError(
            "bad_request", f"a frame must be a JSON object; got {type(obj).__name__}"
        )
    return obj


def _request_id(obj: dict[str, Any]) -> int | str:
    if "id" not in obj:
        raise AgentcgError("bad_request", 'request has no "id"; add "id": <int or string>')
    rid = obj["id"]
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        raise AgentcgError("bad_request", f'"id" must be an int or a string; got {show(rid)}')
    if isinstance(rid, int) and not -MAX_INT_ID <= rid <= MAX_INT_ID:
        raise AgentcgError("bad_request", '"id" integer is out of the 64-bit range')
    if isinstance(rid, str) and (len(rid) > MAX_ID_LEN or not rid.isprintable()):
        raise AgentcgError(
            "bad_request", f'"id" string must be at most {MAX_ID_LEN} printable characters'
        )
    return rid


def _parse(obj: dict[str, Any], rid: int | str, require_version: bool) -> Request:
    for key in obj:
        if key not in ENVELOPE_KEYS:
            raise AgentcgError(
                "unknown_field",
                f"unknown top-level field {show(key)}; allowed: {', '.join(sorted(ENVELOPE_KEYS))}",
            )
    version = obj.get("v")
    if version is None:
        if require_version:
            raise AgentcgError("bad_request", f'request needs "v": {PROTOCOL_VERSION}')
    elif isinstance(version, bool) or not isinstance(version, int):
        raise AgentcgError("invalid_value", f'"v" must be an integer; got {show(version)}')
    elif version != PROTOCOL_VERSION:
        raise AgentcgError(
            "unsupported_version",
            f'this daemon speaks protocol v{PROTOCOL_VERSION}; resend with "v": {PROTOCOL_VERSION}',
        )

    op = obj.get("op")
    if op is None:
        raise AgentcgError("bad_request", 'request has no "op"')
    if not isinstance(op, str):
        raise AgentcgError("bad_request", f'"op" must be a string; got {show(op)}')
    spec = OPS.get(op)
    if spec is None:
        raise AgentcgError(
            "unknown_op", f"unknown op {show(op)}; known ops: {', '.join(sorted(OPS))}"
        )

    raw = obj.get("args")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise AgentcgError(
            "invalid_value", f'"args" must be an object; got {type(raw).__name__} {show(raw)}'
        )
    for key in raw:
        if key not in spec.args:
            allowed = ", ".join(spec.args) or "none"
            raise AgentcgError(
                "unknown_field", f"{op} has no argument {show(key)}; allowed: {allowed}"
            )
    args: dict[str, Any] = {}
    for key, arg in spec.args.items():
        value = raw.get(key)
        if value is None:  # null is the same as leaving an optional argument out
            if arg.required:
                raise AgentcgError("bad_request", f"{op} needs argument {show(key)}")
            continue
        args[key] = arg.check(f"{op}.{key}", value)
    return Request(id=rid, op=op, args=args, version=version)


def parse_request(
    line: bytes, max_frame: int = DEFAULT_MAX_FRAME, *, require_version: bool = False
) -> Request:
    """Parse and fully validate one request frame.

    Raises AgentcgError; its ``request_id`` is set whenever the id could be read, so the
    server can answer ``err(e.request_id, e)``. ``require_version`` is for the first
    frame of a connection, before hello ("v" is optional after it).
    """
    obj = decode(line, max_frame)
    rid = _request_id(obj)
    try:
        return _parse(obj, rid, require_version)
    except AgentcgError as e:
        e.request_id = rid
        raise


def negotiate_version(client_version: int) -> int:
    """Version both sides speak, given the client's highest (hello.version)."""
    return min(client_version, PROTOCOL_VERSION)


def encode(obj: Mapping[str, Any]) -> bytes:
    """One frame: compact JSON plus newline. ASCII-only so any peer string is safe."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def ok(id: int | str | None, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": id, "ok": True, "result": dict(result)}


def err(id: int | str | None, error: AgentcgError) -> dict[str, Any]:
    return {"id": id, "ok": False, "error": error.to_dict()}


def event(name: str, call: str | None, data: Mapping[str, Any]) -> dict[str, Any]:
    """An event frame; `call` is null for events about a request not yet a call."""
    if name not in EVENTS:
        raise ValueError(f"unknown event {name!r}")
    return {"event": name, "call": call, "data": dict(data)}

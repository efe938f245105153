"""Error type shared by the daemon, the client and the wire protocol.

Every failure that can reach a peer is an AgentcgError with a stable machine-readable
``code`` (part of protocol v1) and a one-line ``message`` saying what happened and what
to do about it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

# Annotations only (never evaluated): importing typing would slow `agentcg run`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ErrorCode(StrEnum):
    """Protocol v1 error codes (docs/protocol.md); a code is compared as its string."""

    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_VALUE = "invalid_value"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    LIMIT_EXCEEDED = "limit_exceeded"
    BUSY = "busy"
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"


CODES: frozenset[str] = frozenset(c.value for c in ErrorCode)

# Messages travel inside single NDJSON frames and log lines; keep them short and flat.
_MAX_MESSAGE = 1000


class AgentcgError(Exception):
    """A failure with a protocol error code.

    ``request_id`` is set by the protocol parser when the failing request's id was
    readable, so the server can echo it in the error response (null otherwise).
    """

    def __init__(self, code: str | ErrorCode, message: str, *, request_id: int | str | None = None):
        if code not in CODES:
            raise ValueError(f"unknown agentcg error code {code!r}")
        message = " ".join(message.split())[:_MAX_MESSAGE]
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.request_id = request_id

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}

    @staticmethod
    def from_dict(d: Any) -> AgentcgError:
        """Rebuild an error received from the daemon (client side).

        An unknown or malformed code becomes ``internal`` so a newer daemon cannot crash
        an older client.
        """
        if not isinstance(d, dict):
            return AgentcgError("internal", f"daemon sent a malformed error object: {d!r:.200}")
        code, message = d.get("code"), d.get("message")
        if not isinstance(message, str):
            message = f"daemon sent an error without a message: {d!r:.200}"
        if not isinstance(code, str) or code not in CODES:
            return AgentcgError("internal", f"daemon error {code!r:.40}: {message}")
        sub = _BY_CODE.get(code)
        # Fixed-code subclasses take only a message; this lets clients catch NotFound etc.
        return sub(message) if sub is not None else AgentcgError(code, message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigError(AgentcgError):
    """Invalid configuration; the message names the offending dotted key."""

    def __init__(self, message: str):
        super().__init__("invalid_value", message)


class Unauthorized(AgentcgError):
    def __init__(self, message: str):
        super().__init__("unauthorized", message)


class NotFound(AgentcgError):
    def __init__(self, message: str):
        super().__init__("not_found", message)


class Conflict(AgentcgError):
    def __init__(self, message: str):
        super().__init__("conflict", message)


class LimitExceeded(AgentcgError):
    def __init__(self, message: str):
        super().__init__("limit_exceeded", message)


class Unavailable(AgentcgError):
    def __init__(self, message: str):
        super().__init__("unavailable", message)


_BY_CODE: dict[str, Callable[[str], AgentcgError]] = {
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "conflict": Conflict,
    "limit_exceeded": LimitExceeded,
    "unavailable": Unavailable,
}

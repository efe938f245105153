"""One-shot `stats` request for the exporter, `agentcg top` and `agentcg status`.

A fresh connection per read: nothing to reconnect after a daemon restart, no idle
connection for the daemon to time out, and a scrape that cannot hang longer than
``timeout``. The daemon decides the scope from who connects: every session for
admins and metrics readers, the caller's own sessions otherwise.
"""

from __future__ import annotations

import socket
from typing import Any

from agentcg.client.connection import socket_path
from agentcg.core.errors import AgentcgError
from agentcg.core.protocol import PROTOCOL_VERSION, decode, encode

MAX_REPLY = 64 << 20  # a stats reply grows with sessions and calls; bounded all the same


def fetch_stats(
    path: str | None = None, session: str | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """The daemon's `stats` result; raises AgentcgError (unavailable, timeout, ...)."""
    path = path or socket_path()
    args = {"session": session} if session else {}
    frames = [
        {"v": PROTOCOL_VERSION, "id": 1, "op": "hello", "args": {"version": PROTOCOL_VERSION}},
        {"v": PROTOCOL_VERSION, "id": 2, "op": "stats", "args": args},
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(b"".join(encode(f) for f in frames))
            reply = _read_reply(sock, 2)
        except TimeoutError:
            raise AgentcgError(
                "timeout", f"no stats from the agentcg daemon at {path} within {timeout:g}s"
            ) from None
        except OSError as e:
            raise AgentcgError(
                "unavailable",
                f"cannot reach the agentcg daemon at {path} ({e.strerror or e}); "
                "is `agentcg daemon` running?",
            ) from None
    if not reply.get("ok"):
        raise AgentcgError.from_dict(reply.get("error"))
    result: dict[str, Any] = reply["result"]
    return result


def _read_reply(sock: socket.socket, want_id: int) -> dict[str, Any]:
    """Read frames until the response with ``want_id`` (or an id-null refusal)."""
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            msg = decode(line, MAX_REPLY)
            if "event" in msg:
                continue
            if msg.get("id") in (want_id, None) or not msg.get("ok"):
                return msg
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise AgentcgError("unavailable", "the agentcg daemon closed the connection; retry")
        buf += chunk
        if len(buf) > MAX_REPLY:
            raise AgentcgError("frame_too_large", "the daemon's stats reply is too large")

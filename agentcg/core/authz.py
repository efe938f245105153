"""Who may do what: pure decisions over a peer's identity and where its cgroup is.

The kernel adapter (agentcg.kernel.peer) says who the peer is; these functions decide.
A peer inside a tool call is a tool; inside a session it is that session's agent; root
inside a container or a session is still an agent, never an admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agentcg.core.config import AdminConfig
from agentcg.core.errors import AgentcgError
from agentcg.core.model import Call, Session

RESERVED_PREFIXES = ("uid-", "ctr-")  # default session names; chosen by the daemon


class Identity(Protocol):
    @property
    def pid(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def cgroup(self) -> str: ...
    @property
    def container(self) -> str | None: ...


@dataclass(frozen=True)
class Location:
    session: str | None
    call: str | None


def locate(sessions_prefix: str, cgroup: str) -> Location:
    """Which session (and tool call) a cgroup path puts a peer in, if any.

    ``sessions_prefix`` is the daemon's sessions cgroup as /proc/<pid>/cgroup shows it,
    with a trailing slash.
    """
    if not cgroup.startswith(sessions_prefix):
        return Location(None, None)
    parts = cgroup[len(sessions_prefix) :].split("/")
    call = parts[2] if len(parts) > 2 and parts[1] == "tools" else None
    return Location(parts[0] or None, call)


def is_admin(peer: Identity, where: Location, admin: AdminConfig) -> bool:
    if peer.container is not None or where.session:
        return False  # root inside a container or a session is still an agent
    return peer.uid in admin.uids or peer.gid in admin.gids


def default_session_name(peer: Identity) -> str:
    return f"ctr-{peer.container[:12]}" if peer.container else f"uid-{peer.uid}"


def authorize_session(peer: Identity, where: Location, admin: bool, sess: Session) -> None:
    """Raise unless the peer may act on the session."""
    if where.call:
        # A tool may not steer its own session: close it, open others, adopt itself.
        raise AgentcgError(
            "unauthorized",
            f"a tool inside call {where.call} cannot act on sessions; "
            "its agent (the process that began the call) can",
        )
    if admin or where.session == sess.name:
        return
    if sess.owner_uid == peer.uid and sess.container == peer.container:
        return
    raise AgentcgError(
        "unauthorized",
        f"session {sess.name!r} belongs to another agent; open your own with session.open",
    )


def authorize_call(peer: Identity, admin: bool, call: Call, sess: Session | None) -> None:
    """Raise unless the peer may act on the call (its token is checked separately)."""
    if admin:
        return
    if call.owner_uid != peer.uid or (sess and sess.container != peer.container):
        raise AgentcgError("unauthorized", f"call {call.id!r} belongs to another agent")


def check_session_name(name: str, default: str, admin: bool) -> None:
    if name != default and name.startswith(RESERVED_PREFIXES) and not admin:
        raise AgentcgError(
            "invalid_value",
            f"session names starting uid- or ctr- are reserved for default sessions; "
            f"yours is {default!r}",
        )

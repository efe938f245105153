"""Who may do what: pure decisions over a peer's identity and where its cgroup is.

The kernel adapter (agentcg.kernel.peer) says who the peer is; these functions decide.
A peer inside a tool call is a tool; inside a session it is that session's agent; root
in namespaces other than the daemon's (a container) or inside a session is still an
agent, never an admin. An agent is its uid plus its home: the cgroup it came from,
below which its sessions live (daemon/homes.py). A container id is only a label.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
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
    @property
    def confined(self) -> bool: ...


@dataclass(frozen=True)
class Location:
    session: str | None
    call: str | None
    home: str | None = None  # the peer's home cgroup; None: the daemon's own tree


def is_admin(peer: Identity, where: Location, admin: AdminConfig) -> bool:
    if where.session or not (peer.uid in admin.uids or peer.gid in admin.gids):
        return False
    # Root in a container's namespaces is an agent. Asked last: it costs /proc reads.
    return not peer.confined


def default_session_name(peer: Identity, home: str | None, taken: Callable[[str], bool]) -> str:
    """A readable name for the peer's default session, unique: the label of its
    container or its uid, plus a digest of its home if that name is already taken."""
    base = f"ctr-{peer.container[:12]}" if peer.container else f"uid-{peer.uid}"
    if not taken(base):
        return base
    digest = hashlib.sha256(f"{peer.uid}:{home}".encode()).hexdigest()
    for n in range(8, 33, 4):
        name = f"{base}-{digest[:n]}"
        if not taken(name):
            return name
    raise AgentcgError("conflict", f"no free default session name for {base}; close some")


def authorize_session(
    peer: Identity, where: Location, admin: Callable[[], bool], sess: Session
) -> None:
    """Raise unless the peer may act on the session. `admin` is asked only if the peer
    is neither in the session nor its owner."""
    if where.call:
        # A tool may not steer its own session: close it, open others, adopt itself.
        raise AgentcgError(
            "unauthorized",
            f"a tool inside call {where.call} cannot act on sessions; "
            "its agent (the process that began the call) can",
        )
    if where.session == sess.name or (sess.owner_uid == peer.uid and sess.home == where.home):
        return
    if admin():
        return
    raise AgentcgError(
        "unauthorized",
        f"session {sess.name!r} belongs to another agent; open your own with session.open",
    )


def authorize_call(
    peer: Identity, where: Location, admin: Callable[[], bool], call: Call, sess: Session | None
) -> None:
    """Raise unless the peer may act on the call (its token is checked separately).
    `admin` is asked only if the peer is not the call's owner."""
    if call.owner_uid == peer.uid and sess is not None and sess.home == where.home:
        return
    if not admin():
        raise AgentcgError("unauthorized", f"call {call.id!r} belongs to another agent")


def check_session_name(name: str, default: str, admin: bool) -> None:
    if name != default and name.startswith(RESERVED_PREFIXES) and not admin:
        raise AgentcgError(
            "invalid_value",
            f"session names starting uid- or ctr- are reserved for default sessions; "
            f"yours is {default!r}",
        )

"""core.authz: who may act on what, and that the costly namespace read (a peer's
`confined`) is made only where it decides."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agentcg.core import authz
from agentcg.core.config_sections import AdminConfig
from agentcg.core.errors import AgentcgError
from agentcg.core.model import Session

ADMIN = AdminConfig(uids=(0,), gids=(10,))


@dataclass
class FakePeer:
    uid: int
    gid: int = 100
    ns: bool = False  # what a read of its namespaces would say
    pid: int = 42
    cgroup: str = "/"
    container: str | None = None
    reads: list[int] = field(default_factory=list)

    @property
    def confined(self) -> bool:
        self.reads.append(1)
        return self.ns


def test_is_admin_reads_namespaces_only_for_admin_ids_outside_sessions() -> None:
    host = authz.Location(None, None)
    agent = FakePeer(uid=1000)
    assert not authz.is_admin(agent, host, ADMIN) and agent.reads == []
    in_session = FakePeer(uid=0)
    assert not authz.is_admin(in_session, authz.Location("s", None), ADMIN)
    assert in_session.reads == []
    root = FakePeer(uid=0)
    assert authz.is_admin(root, host, ADMIN) and root.reads == [1]
    by_gid = FakePeer(uid=1000, gid=10)
    assert authz.is_admin(by_gid, host, ADMIN)
    contained_root = FakePeer(uid=0, ns=True)  # root in a container's namespaces
    assert not authz.is_admin(contained_root, host, ADMIN)


def test_owner_acts_on_its_session_and_call_without_asking_admin() -> None:
    sess = Session("s", 1000, None, None, None, None, 8, 0.0, home="/h")
    owner, where = FakePeer(uid=1000), authz.Location(None, None, "/h")

    def never() -> bool:
        raise AssertionError("admin asked for the owner")

    authz.authorize_session(owner, where, never, sess)


def test_others_need_admin() -> None:
    sess = Session("s", 1000, None, None, None, None, 8, 0.0, home="/h")
    other, where = FakePeer(uid=1001), authz.Location(None, None, "/h")
    asked: list[int] = []

    def admin(answer: bool) -> bool:
        asked.append(1)
        return answer

    with pytest.raises(AgentcgError) as ei:
        authz.authorize_session(other, where, lambda: admin(False), sess)
    assert ei.value.code == "unauthorized" and asked == [1]
    authz.authorize_session(other, where, lambda: admin(True), sess)
    elsewhere = authz.Location(None, None, "/other")  # same uid, another home
    with pytest.raises(AgentcgError):
        authz.authorize_session(FakePeer(uid=1000), elsewhere, lambda: False, sess)
    tool = authz.Location("s", "c1", "/h")  # a tool may not steer, admin or not
    with pytest.raises(AgentcgError):
        authz.authorize_session(FakePeer(uid=0), tool, lambda: True, sess)

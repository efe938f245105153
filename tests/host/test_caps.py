from pathlib import Path

import pytest

from agentcg.core import caps
from agentcg.core.config import Config, Grant, load_config
from agentcg.core.errors import AgentcgError
from agentcg.daemon.homes import Homes, Place
from agentcg.daemon.layout import Layout
from agentcg.daemon.state import State
from agentcg.kernel.cgroup import find_cgroup2_mount

MiB, GiB = 1 << 20, 1 << 30


def cfg(**overrides: object) -> Config:
    return load_config(None, overrides)


def test_session_memory_is_always_capped() -> None:
    c = cfg()
    assert caps.session_memory(c, None, 8 * GiB) == (None, 4 * GiB)  # no ask: the cap
    assert caps.session_memory(c, 1 * GiB, 8 * GiB) == (1 * GiB, 1 * GiB)
    with pytest.raises(AgentcgError, match=r"exceeds the cap 4\.0 GiB") as e:
        caps.session_memory(c, 2**50, 8 * GiB)
    assert e.value.code == "limit_exceeded"
    capped = cfg(**{"session.max_memory": "2G", "session.default_memory": "1G"})
    assert caps.session_memory(capped, None, 64 * GiB) == (1 * GiB, 1 * GiB)
    # A container with 64 MiB: the default is lowered to what is there.
    assert caps.session_memory(capped, None, 64 * MiB) == (32 * MiB, 32 * MiB)


def test_session_pids_never_above_config_or_ancestors() -> None:
    c = cfg()
    assert caps.session_pids(c, None, None) == 4096
    assert caps.session_pids(c, None, 100) == 100
    assert caps.session_pids(c, 500, None) == 500
    for ask, above in ((4194304, None), (200, 100)):
        with pytest.raises(AgentcgError, match="exceeds the cap"):
            caps.session_pids(c, ask, above)


def test_priorities_above_the_default_need_a_grant() -> None:
    c = load_config(None, {"grants.high": {"uids": [1000], "containers": ["web"]}})
    assert [p for p in c.priorities if caps.privileged(c, p)] == ["critical", "high"]
    caps.check_priority(c, "normal", lambda: False, 7, (), None)
    caps.check_priority(c, "low", lambda: False, 7, (), None)
    caps.check_priority(c, "critical", lambda: True, 7, (), None)  # admins may
    caps.check_priority(c, "high", lambda: False, 1000, (), None)
    caps.check_priority(c, "high", lambda: False, 7, (), "web")
    for prio, uid, label in (("high", 7, None), ("high", 7, "other"), ("critical", 1000, "web")):
        with pytest.raises(AgentcgError, match="needs a grant") as e:
            caps.check_priority(c, prio, lambda: False, uid, (), label)
        assert e.value.code == "unauthorized"
    assert caps.granted(Grant(gids=(27,)), 7, (5, 27), None)
    assert not caps.granted(None, 0, (0,), "x")


def test_protection_and_connections() -> None:
    c = cfg()
    assert caps.protection_budget(c, 8 * GiB, None) == 2 * GiB
    assert caps.protection_budget(c, 8 * GiB, 1 * GiB) == 256 * MiB
    assert caps.agent_connections(c) == 1024 - 16
    assert caps.agent_connections(cfg(**{"daemon.max_connections": 5})) == 1


def test_place_of_a_cgroup(tmp_path: Path) -> None:
    mount = find_cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 mount to name paths under")
    layout = Layout(cfg(**{"daemon.root": str(mount / "srv/agentcg")}))
    homes = Homes(layout, State(tmp_path / "state"))
    homes.anchors.add("/docker/abc")
    layout.homes.update({"s1": None, "c1": "/docker/abc"})
    assert homes.place("/") == Place(None)  # the host's root: the daemon's own tree
    assert homes.place("/srv") == Place(None)
    assert homes.place("/srv/agentcg/sessions/s1/agent") == Place(None, "s1")
    assert homes.place("/srv/agentcg/sessions/s1/tools/c0") == Place(None, "s1", "c0")
    assert homes.place("/user.slice/u.scope") == Place("/user.slice/u.scope")
    assert homes.place("/docker/abc") == Place("/docker/abc")
    assert homes.place("/docker/abc/agentcg-leaf") == Place("/docker/abc")
    assert homes.place("/docker/abc/agentcg/c1/agent") == Place("/docker/abc", "c1")
    assert homes.place("/docker/abc/agentcg/c1/tools/c9") == Place("/docker/abc", "c1", "c9")
    # Only a prepared home's leaf counts: anyone can name a directory agentcg-leaf.
    assert homes.place("/docker/xyz/agentcg-leaf") == Place("/docker/xyz/agentcg-leaf")
    assert layout.session("c1").path == mount / "docker/abc/agentcg/c1"
    assert layout.session("s1").path == mount / "srv/agentcg/sessions/s1"

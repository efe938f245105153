import os
import socket
import stat
from pathlib import Path

import pytest

from agentcg.core.errors import AgentcgError
from agentcg.daemon.listen import bind_socket
from agentcg.daemon.state import StateDirError


def test_socket_mode_group_and_stale_takeover(tmp_path: Path) -> None:
    path = tmp_path / "run" / "agentcg.sock"
    first = bind_socket(path, 1234, 0o660)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == 1234
    assert os.listdir(path.parent) == ["agentcg.sock"]
    # A live daemon is refused...
    with pytest.raises(AgentcgError, match="another daemon is serving"):
        bind_socket(path, -1, 0o660)
    # ...a dead one's socket is replaced, and a client reaches the new one.
    first.close()
    second = bind_socket(path, -1, 0o666)
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(path))
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o666
    second.close()


def test_planted_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    victim = tmp_path / "victim"
    victim.write_text("x")
    victim.chmod(0o600)
    (run / "agentcg.sock").symlink_to(victim)
    bind_socket(run / "agentcg.sock", 1234, 0o666).close()
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.stat().st_gid == 0
    assert stat.S_ISSOCK(os.lstat(run / "agentcg.sock").st_mode)


def test_socket_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "open"
    run.mkdir()
    run.chmod(0o777)
    with pytest.raises(StateDirError, match="0755 or tighter"):
        bind_socket(run / "agentcg.sock", -1, 0o660)
    mine = tmp_path / "mine"
    mine.mkdir()
    os.chown(mine, 1000, 1000)
    with pytest.raises(StateDirError, match="owned by uid 0"):
        bind_socket(mine / "agentcg.sock", -1, 0o660)

"""The daemon's op table: every op the protocol defines has exactly one handler."""

from pathlib import Path

from agentcg.core.config import load_config
from agentcg.core.protocol import OPS
from agentcg.daemon.app import Daemon
from agentcg.kernel.cgroup import find_cgroup2_mount


def test_every_protocol_op_has_a_handler(tmp_path: Path) -> None:
    # Only paths are computed: nothing is created under the (real) cgroup2 mount.
    root = (find_cgroup2_mount() or Path("/sys/fs/cgroup")) / "agentcg-never-created"
    cfg = load_config(None, {"daemon.root": str(root), "daemon.state_dir": str(tmp_path)})
    daemon = Daemon(cfg)
    assert set(daemon.handlers) == set(OPS)
    assert all(callable(h) for h in daemon.handlers.values())

"""Issue 7, High 3 and Medium 5: the daemon's state is its own (private directory, no
symlink followed, forged records rejected), and one daemon owns a state directory and a
cgroup root, decided before anything is touched; a killed daemon's socket is taken over."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agentcg.client import Client
from tests.kernel.daemon_fixture import RunningDaemon
from tests.kernel.security_helpers import NOBODY, Peer, codes
from tests.kernel.test_robustness import Raw

# These tests stop, kill or restart their daemon: each gets its own.
pytestmark = [pytest.mark.kernel, pytest.mark.fresh_daemon]


def test_state_is_private_and_planted_links_are_not_followed(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    st = os.stat(daemon.state_dir)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
    assert os.listdir(daemon.run_dir) == ["agentcg.sock"]  # agents get only the socket
    records = daemon.state_dir / "state.v2"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # Attack: links where the daemon writes a record (its final and its old temp name).
    (records / "sessions" / "planted.json").symlink_to(victim)
    (records / "sessions" / ".planted.tmp").symlink_to(victim)
    with Client() as c:
        c.open_session("planted")
    assert victim.read_text() == "precious"
    assert stat.S_ISREG(os.lstat(records / "sessions" / "planted.json").st_mode)

    # Attack: a forged record gives uid 65534 a session and an escape path for close.
    daemon.kill9()
    forged = daemon.root.child("sessions").child("forged").create()
    forged.child("agent").create()
    sleeper = subprocess.Popen(["sleep", "600"])
    forged.child("agent").add_process(sleeper.pid)
    record = {
        "name": "forged",
        "owner_uid": NOBODY,
        "container": None,
        "memory": None,
        "cpu": None,
        "pids": None,
        "max_calls": 4,
        "created": 0.0,
        "adopted": {str(sleeper.pid): "/../../etc"},
    }
    (records / "sessions" / "forged.json").write_text(json.dumps(record))
    try:
        daemon.start()
        log = daemon.log.read_text()
        assert "forged.json: session record field 'adopted' is invalid" in log, log[-3000:]
        peer = Peer(codes(daemon, [("session.close", {"session": "forged"})]), uid=NOBODY)
        assert peer.recv() == ["unauthorized"]
        assert peer.wait() == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_second_daemon_refuses_before_touching_anything(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    assert daemon.proc is not None
    first = daemon.proc.pid
    c = Client()
    pending = c.tool_call(memory="32M", label="later").begin()  # no process yet
    running = c.tool_call(memory="32M", label="sleep")
    proc = running.popen(["sleep", "600"])

    # Same config: before, it ran recovery over the first daemon's tree (and removed
    # the pending call's cgroup) before noticing the live socket.
    same = run_daemon(daemon.config)
    assert same.returncode != 0
    assert f"another agentcg daemon (pid {first}) is running on state directory" in same.stderr
    assert len(same.stderr.strip().splitlines()) == 1, same.stderr
    # Same cgroup root, its own socket and state: both used to run and kill each
    # other's calls as orphans.
    other = tmp_path / "other.toml"
    other_state = Path(f"/run/agentcg-other-{first}.state")
    other.write_text(
        f'[daemon]\nroot = "{daemon.root.path}"\nsocket = "/run/agentcg-other-{first}/s.sock"\n'
        f'state_dir = "{other_state}"\n'
    )
    try:
        shared_root = run_daemon(other)
    finally:
        shutil.rmtree(other_state, ignore_errors=True)
    assert shared_root.returncode != 0
    assert f"(pid {first}) is running on cgroup root {daemon.root.path}" in shared_root.stderr
    assert Path(pending.info["cgroup"]).is_dir()
    assert c.request("call.status", call=pending.id)["state"] == "pending"
    assert pending.end()["exit_status"] is None

    # A daemon killed with -9 leaves its socket behind: the next one takes it over, and
    # the agent, reconnected, still owns its running call.
    daemon.kill9()
    c.close()
    assert daemon.socket.exists()
    daemon.start()
    with Raw(daemon) as r:
        assert r.ok("call.claim", call=running.id, token=running.token)["state"] == "running"
        proc.terminate()
        proc.wait()
        out = r.ok("call.end", call=running.id, token=running.token, exit_status=-15)
        assert out["signal"] == 15


@pytest.mark.parametrize("where", ["socket_dir", "loose"])
def test_state_dir_shared_with_the_socket_or_loose_is_refused(tmp_path: Path, where: str) -> None:
    d = RunningDaemon(tmp_path)
    if where == "socket_dir":
        d.config.write_text(
            d.config.read_text().replace(
                f'state_dir = "{d.state_dir}"', f'state_dir = "{d.run_dir}"'
            )
        )
        expected = "overlap"
    else:
        d.state_dir.mkdir(mode=0o755)
        d.state_dir.chmod(0o755)
        expected = "must be owned by uid 0 with mode 0700"
    try:
        refused = run_daemon(d.config)
        assert refused.returncode != 0 and expected in refused.stderr, refused.stderr
        assert not d.root.exists()  # refused before touching cgroupfs
    finally:
        d.cleanup()


def run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    """`agentcg daemon` in the foreground, expected to refuse (a slow VM may take minutes
    only to import it)."""
    return subprocess.run(
        [sys.executable, "-m", "agentcg.cli.main", "daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=900,
    )

import os
import socket
import subprocess
import sys

import pytest

from agentcg.kernel.peer import PeerGone, PeerHandle, container_of, is_descendant, parent_pid

CID = "4f" * 32


@pytest.mark.parametrize(
    ("cgroup", "container"),
    [
        (f"/docker/{CID}", CID),  # cgroupfs driver
        (f"/system.slice/docker-{CID}.scope", CID),  # systemd driver
        (f"/docker/{CID}/nested", CID),
        ("/user.slice/user-1000.slice/session-2.scope", None),
        (f"/docker/{CID[:-1]}", None),  # not a full id
        (f"/mydocker/{CID}x", None),
        ("", None),
    ],
)
def test_container_of(cgroup: str, container: str | None) -> None:
    assert container_of(cgroup) == container


def test_descendants() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert parent_pid(child.pid) == os.getpid()
        assert is_descendant(child.pid, os.getpid())
        assert is_descendant(os.getpid(), os.getpid())
        assert not is_descendant(os.getpid(), child.pid)
    finally:
        child.kill()
        child.wait()
    assert parent_pid(child.pid) is None
    assert not is_descendant(child.pid, os.getpid())


def test_peer_handle_fails_closed_when_the_connecting_process_is_gone(tmp_path) -> None:
    with socket.socket(socket.AF_UNIX) as ours:
        ours.bind(str(tmp_path / "s"))
        ours.listen()
        with socket.socket(socket.AF_UNIX) as me:
            me.connect(str(tmp_path / "s"))
            conn, _ = ours.accept()
            with conn:
                handle = PeerHandle(conn)
                assert (handle.pid, handle.uid) == (os.getpid(), os.getuid())
                assert handle.current().pid == os.getpid()
                handle.close()
        # A child connects, exits and is reaped; its connection is still open here.
        pid = os.fork()
        if pid == 0:
            socket.socket(socket.AF_UNIX).connect(str(tmp_path / "s"))
            os._exit(0)
        conn, _ = ours.accept()
        os.waitpid(pid, 0)
        with conn, pytest.raises(PeerGone):
            PeerHandle(conn).current()

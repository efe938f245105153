import ctypes
import os
import signal
import socket
import subprocess
import sys

import pytest

from agentcg.kernel.peer import (
    Peer,
    PeerGone,
    PeerHandle,
    container_of,
    is_descendant,
    parent_pid,
)

CID = "4f" * 32
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000  # os.unshare needs Python 3.12


@pytest.mark.parametrize(
    ("cgroup", "container"),
    [
        (f"/docker/{CID}", CID),  # cgroupfs driver
        (f"/system.slice/docker-{CID}.scope", CID),  # systemd driver
        (f"/docker/{CID}/nested", CID),
        (f"/system.slice/libpod-{CID}.scope/container", CID),  # podman
        (f"/kubepods.slice/kubepods-pod1.slice/cri-containerd-{CID}.scope", CID),
        (f"/kubepods/burstable/pod7/{CID}", CID),  # kubelet, cgroupfs driver
        ("/lxc.payload.web1/init.scope", "web1"),
        ("/machine.slice/machine-deb12.scope/payload", "deb12"),
        (f"/docker/{CID}/docker/{'ab' * 32}", CID),  # the outermost one labels it
        ("/user.slice/user-1000.slice/session-2.scope", None),
        (f"/docker/{CID[:-1]}", None),  # not a full id
        (f"/mydocker/{CID}x", None),
        ("", None),
    ],
)
def test_container_of(cgroup: str, container: str | None) -> None:
    assert container_of(cgroup) == container


def test_label_needs_a_root_owned_cgroup(tmp_path) -> None:
    # A user with a delegated subtree can name a directory after a container; a label
    # counts only where root owns the directory that carries it.
    fake = tmp_path / "user.slice" / f"docker-{CID}.scope"
    fake.mkdir(parents=True)
    path = f"/user.slice/docker-{CID}.scope"
    assert container_of(path, tmp_path) == CID
    os.chown(fake, 1000, 1000)
    assert container_of(path, tmp_path) is None
    assert container_of(path) == CID  # the path alone, without the ownership check


def test_confined_means_other_namespaces(tmp_path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as ours:
        ours.bind(path)
        ours.listen()
        for flags, confined in ((0, False), (CLONE_NEWUSER, True), (CLONE_NEWNS, True)):
            pid = os.fork()
            if pid == 0:
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(path)
                    if flags:
                        assert ctypes.CDLL(None, use_errno=True).unshare(flags) == 0
                    s.send(b"x")  # now in its namespaces
                    s.recv(1)
                finally:
                    os._exit(0)
            conn, _ = ours.accept()
            with conn:
                conn.recv(1)
                handle = PeerHandle(conn)
                peer = handle.current()
                assert peer.ns_confined is None  # read only when a decision asks
                assert (peer.pid, peer.confined) == (pid, confined)
                assert peer.as_dict()["confined"] is confined
                handle.close()
            os.waitpid(pid, 0)


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


def test_confined_fails_closed_for_a_gone_process() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    pidfd = os.pidfd_open(pid)
    try:
        os.waitpid(pid, 0)
        assert Peer(pid, 0, 0, "/", None, None, pidfd).confined is True
    finally:
        os.close(pidfd)


def test_confined_fails_closed_once_the_pidfd_is_closed() -> None:
    # The closed pidfd's number is taken by the /proc/<pid> dir fd opened to read the
    # namespaces, and that fd passes pidfd_send_signal too: it must not count as proof.
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    try:
        pidfd = os.pidfd_open(pid)
        os.close(pidfd)
        assert Peer(pid, 0, 0, "/", None, None, pidfd).confined is True
        live = os.pidfd_open(pid)
        try:
            assert Peer(pid, 0, 0, "/", None, None, live).confined is False
        finally:
            os.close(live)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

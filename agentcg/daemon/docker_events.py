"""Docker containers labelled ``agentcg.session`` become sessions (core.containers).

docker-py's event stream blocks, so a thread reads it (and inspects containers, also
blocking) and hands each container to the loop with call_soon_threadsafe; everything
that touches sessions runs on the loop. On start the session is opened under the
container's own cgroup (its home: ``/docker/<id>`` with the cgroupfs driver,
``/system.slice/docker-<id>.scope`` with systemd's; read from the main process, not
guessed), owned by the container's main process's uid, and made that uid's default
session there, so `agentcg run` inside the container uses it. On die the session is
closed and its calls cleaned up. After a reconnect (or a daemon restart) the running
labelled containers are listed first, then events are read from that moment on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcg.core.containers import SESSION_LABEL, container_session
from agentcg.core.errors import AgentcgError
from agentcg.daemon.registry import Registry
from agentcg.daemon.sessions import Sessions
from agentcg.kernel.cgroup import CgroupError, cgroup_path_of_pid, find_cgroup2_mount
from agentcg.kernel.peer import Peer, container_of

log = logging.getLogger("agentcg.daemon.docker")

RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # reconnect backoff while dockerd is away
API_TIMEOUT_S = 30.0
SOCKET_POLL_S = 5.0


@dataclass(frozen=True)
class Container:
    id: str
    pid: int  # its main process, in the daemon's pid namespace
    labels: dict[str, str]


class DockerEvents:
    def __init__(self, reg: Registry, sessions: Sessions, socket: Path) -> None:
        self.reg = reg
        self.sessions = sessions
        self.socket = socket
        self.by_container: dict[str, str] = {}  # container id -> session name
        self._stop = threading.Event()
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        threading.Thread(target=self._follow, name="docker-events", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()  # unblocks the thread's read

    # ------------------------------------------------------------ thread

    def _follow(self) -> None:
        while not self.socket.exists():  # no Docker on this host (yet): wait quietly
            if self._stop.wait(SOCKET_POLL_S):
                return
        try:
            import docker
            from docker.errors import DockerException
            from requests.exceptions import RequestException
        except ImportError:
            log.warning(
                "Docker runs at %s but the docker SDK is missing: pip install "
                "'agentcg[docker]' to give labelled containers their sessions",
                self.socket,
            )
            return
        failures = 0
        while not self._stop.is_set():
            try:
                client = docker.DockerClient(
                    base_url=f"unix://{self.socket}", timeout=API_TIMEOUT_S
                )
                since = int(time.time())
                running = [
                    self._inspect(c.attrs)
                    for c in client.containers.list(filters={"label": SESSION_LABEL})
                ]
                self._hand_over(self._sync, [c for c in running if c is not None])
                self._stream = client.events(
                    since=since,
                    decode=True,
                    filters={"type": "container", "label": SESSION_LABEL},
                )
                failures = 0
                log.info("following Docker events at %s", self.socket)
                for ev in self._stream:
                    self._event(client, ev)
            except (DockerException, RequestException, OSError) as e:
                failures += 1
                if failures == 1:
                    log.warning("Docker at %s: %s; retrying", self.socket, e)
            if not self._stop.is_set():
                self._stop.wait(RETRY_S[min(failures, len(RETRY_S) - 1)])

    def _event(self, client: Any, ev: dict[str, Any]) -> None:
        action = ev.get("Action") or ev.get("status")
        cid = (ev.get("Actor") or {}).get("ID") or ev.get("id", "")
        if action == "start":
            info = self._inspect(client.api.inspect_container(cid))
            if info is not None:
                self._hand_over(self._started, info)
        elif action in ("die", "destroy"):
            self._hand_over(self._died, cid)

    @staticmethod
    def _inspect(attrs: dict[str, Any]) -> Container | None:
        state = attrs.get("State") or {}
        if not state.get("Running") or not state.get("Pid"):
            return None
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        return Container(attrs["Id"], int(state["Pid"]), dict(labels))

    def _hand_over(self, fn: Any, arg: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the loop is closed: the daemon is stopping
            self._stop.set()

    # ------------------------------------------------------------ loop

    def _sync(self, running: list[Container]) -> None:
        """After (re)connecting: sessions for running containers; forget the rest."""
        alive = {c.id for c in running}
        for cid in [c for c in self.by_container if c not in alive]:
            self._died(cid)
        for c in running:
            self._started(c)

    def _started(self, c: Container) -> None:
        reg = self.reg
        try:
            want = container_session(c.labels, reg.cfg.priorities)
            cgroup = cgroup_path_of_pid(c.pid)
            st = os.stat(f"/proc/{c.pid}")
        except (AgentcgError, CgroupError, OSError) as e:
            log.warning("container %s: no session: %s", c.id[:12], getattr(e, "message", e))
            return
        peer = Peer(
            pid=c.pid,
            uid=st.st_uid,
            gid=st.st_gid,
            cgroup=cgroup,
            container=container_of(cgroup, find_cgroup2_mount()),
            ns_confined=True,
        )
        existing = reg.sessions.get(want.name)
        if existing is not None:
            if existing.home == reg.locate(peer).home and existing.owner_uid == peer.uid:
                self.by_container[c.id] = want.name  # ours from before a reconnect/restart
            else:
                log.warning(
                    "container %s asks for session %s, which another agent holds; ignored",
                    c.id[:12],
                    want.name,
                )
            return
        try:
            sess = self.sessions.open_session(peer, dict(want.args))
        except AgentcgError as e:
            log.warning("container %s: cannot open session %s: %s", c.id[:12], want.name, e)
            return
        sess.default = True  # `agentcg run` in the container uses it
        reg.state.put("sessions", sess.name, sess.record())
        if want.priority is not None:
            weight = reg.cfg.priorities[want.priority].cpu_weight
            try:
                reg.layout.session(sess.name).set_cpu_weight(weight)
            except (CgroupError, OSError) as e:
                log.warning("session %s: could not set cpu.weight %d: %s", sess.name, weight, e)
        self.by_container[c.id] = sess.name
        log.info("container %s started: session %s", c.id[:12], sess.name)

    def _died(self, cid: str) -> None:
        name = self.by_container.pop(cid, None)
        sess = self.reg.sessions.get(name) if name else None
        if sess is not None:
            log.info("container %s stopped: closing session %s", cid[:12], sess.name)
            self.reg.spawn(self.sessions.close_session(sess, "session_closed"))

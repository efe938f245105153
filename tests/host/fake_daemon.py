"""An in-process fake agentcg daemon speaking NDJSON (docs/protocol.md), for the client
SDK and `agentcg run` tests.

No root and no cgroups: it answers hello, call.begin (with pid: and attach)/claim/end/
attach and a few
test-only ops, and records what it received, on which connection, and the
SO_PEERCRED pid of attach connections.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from agentcg.core.errors import AgentcgError
from agentcg.core.policy import Outcome
from agentcg.core.protocol import encode, err, ok


def wait_for(pred: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the fake daemon")
        time.sleep(0.005)


class FakeDaemon:
    def __init__(self, path: Path, calls: dict[str, str] | None = None) -> None:
        self.path = path
        self.calls: dict[str, str] = {} if calls is None else calls  # call id -> token
        self.received: list[tuple[int, dict[str, Any]]] = []  # (connection no, request)
        self.attach_pids: list[int] = []
        self.attach_ok = True
        self.peer_pid_shift = 0  # nonzero: hello reports another pid, as from a pid namespace
        self.attach_mode = "answer"  # or "hold" (never answer), "drop" (close the connection)
        self.refuse_all = False  # behave like a daemon at max_connections
        self.echo_batch = 1  # answer echo requests in reversed batches of this size
        self.begin_refusal: AgentcgError | None = None  # every call.begin fails with it
        # A full session: a begin without wait_s fails with limit_exceeded; one with
        # wait_s gets this "waiting" message in an event, then its slot.
        self.full_session: str | None = None
        self.conns: list[socket.socket] = []
        self._stop = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.listener.settimeout(0.02)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def ops(self, op: str) -> list[dict[str, Any]]:
        return [m for _, m in self.received if m["op"] == op]

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.conns.append(conn)
            if self.refuse_all:
                conn.sendall(encode(err(None, AgentcgError("busy", "at max_connections"))))
                conn.close()
                continue
            n = len(self.conns)
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        buf = b""
        pending: list[dict[str, Any]] = []  # echo requests held back to reorder them
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                self.received.append((n, msg))
                if msg["op"] == "echo":
                    pending.append(msg)
                    if len(pending) >= self.echo_batch:
                        # Deliberately out of order: the client must match by id.
                        for m in reversed(pending):
                            conn.sendall(encode(ok(m["id"], {"n": m["args"]["n"]})))
                        pending.clear()
                    continue
                try:
                    reply = self._handle(conn, msg)
                except OSError:
                    return  # stop() closed the connection under it
                if reply is None:
                    return
                if reply:
                    try:
                        conn.sendall(encode(reply))
                    except OSError:
                        return  # the client went away first

    def _handle(self, conn: socket.socket, msg: dict[str, Any]) -> dict[str, Any] | None:
        op, rid, args = msg["op"], msg["id"], msg.get("args") or {}
        if op == "hello":
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0] + self.peer_pid_shift  # shifted: "a pid ns"
            return ok(rid, {"version": 1, "server": "fake", "peer": {"pid": pid}})
        if op == "call.begin":
            if self.begin_refusal is not None:
                return err(rid, self.begin_refusal)
            if self.full_session is not None:
                if not args.get("wait_s"):
                    return err(rid, AgentcgError("limit_exceeded", "session 's' is full"))
                data = {"position": 1, "message": self.full_session}
                conn.sendall(encode({"event": "waiting", "call": None, "data": data}))
            cid, token = "c" + secrets.token_hex(6), secrets.token_hex(16)
            self.calls[cid] = token
            limits = {"memory_high": 1 << 30}
            result = {"call": cid, "token": token, "session": "s", "limits": limits}
            if "pid" not in args:
                return ok(rid, result)
            # Begun with a waiting child to attach in the same round trip.
            failed = self._attach(conn, args["pid"])
            if failed in ("hold", "drop"):
                return {} if failed == "hold" else None
            if failed is not None:
                result["attach_error"] = failed.to_dict()
            else:
                result["attached"] = True
            return ok(rid, result)
        if op == "call.claim":
            if args["call"] not in self.calls:
                return err(rid, AgentcgError("not_found", "no such call"))
            return ok(rid, {"call": args["call"], "state": "running"})
        if op == "call.end":
            if self.calls.pop(args["call"], None) is None:
                return err(rid, AgentcgError("not_found", "no such call"))
            status = args.get("exit_status", 0)
            out = Outcome(
                args["call"], "tool", status, None, 0.1, 1, None, 0, 0, 0, 0, 0, False, None
            )
            return ok(rid, out.to_dict())
        if op == "call.attach":
            failed = self._attach(conn, args.get("pid"))
            if failed in ("hold", "drop"):
                return {} if failed == "hold" else None
            if failed is not None:
                return err(rid, failed)
            return ok(rid, {"call": args["call"], "cgroup": "/fake"})
        if op == "hold":
            return {}  # never answered
        if op == "kick":
            # Like the daemon's timeout/frame_too_large/busy: an id-null error, then close.
            conn.sendall(encode(err(None, AgentcgError("busy", "go away"))))
            conn.close()
            return None
        return err(rid, AgentcgError("unknown_op", op))

    def _attach(self, conn: socket.socket, pid: int | None) -> AgentcgError | str | None:
        """None (attached), the error, or "hold" (never answer) / "drop" (close)."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        peer = struct.unpack("3i", creds)[0]
        pid = peer if pid is None else pid
        if pid != peer and _parent_of(pid) != peer:
            return AgentcgError("unauthorized", f"pid {pid} is not your child")
        self.attach_pids.append(pid)
        if self.attach_mode == "hold":
            return "hold"
        if self.attach_mode == "drop":
            conn.close()  # the daemon goes away mid-attach
            return "drop"
        if not self.attach_ok:
            return AgentcgError("unauthorized", "pid is not a descendant")
        return None

    def stop(self) -> None:
        self._stop = True
        self._thread.join()
        self.listener.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])

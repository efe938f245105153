"""Agent-side SDK: open a session, wrap each tool call, get its outcome.

    with Client() as client:
        with client.tool_call(memory="2G", priority="high", label="pytest") as call:
            proc = call.run(["pytest", "-x"])
        print(call.outcome["peak_memory"], call.outcome["advice"])

The tool process is placed into its cgroup by the daemon before it execs: the
forked child connects on its own, sends call.attach, and the daemon moves the
pid the kernel reports for that connection (SO_PEERCRED). The agent never
needs write access to cgroupfs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from agentcg.errors import AgentcgError
from agentcg.protocol import PROTOCOL_VERSION

DEFAULT_SOCKET = "/run/agentcg/agentcg.sock"
RECONNECT_WINDOW_S = 60.0  # how long to wait for a restarting daemon


class _NotSent(AgentcgError):
    """The request never reached the daemon."""


def socket_path() -> str:
    return os.environ.get("AGENTCG_SOCKET", DEFAULT_SOCKET)


class Client:
    """One connection to the daemon; thread-safe request/response plus pushed events."""

    def __init__(
        self,
        path: str | None = None,
        timeout: float = 60.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.path = path or socket_path()
        self.timeout = timeout
        self.on_event = on_event
        self._ids = itertools.count(1)
        self._waiting: dict[int, queue.Queue[dict[str, Any] | None]] = {}
        self._lock = threading.Lock()
        self._calls: dict[str, ToolCall] = {}
        self._closed = False
        self._connected = threading.Event()  # cleared while reconnecting to a restarted daemon
        self._sock = self._connect()
        self.server = self._request("hello", {"version": PROTOCOL_VERSION, "client": "agentcg-py"})
        self._connected.set()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise AgentcgError(
                "unavailable",
                f"cannot reach the agentcg daemon at {self.path} "
                f"({e.strerror}); is `agentcg daemon` running?",
            ) from e
        threading.Thread(target=self._reader, args=(sock,), daemon=True).start()
        return sock

    def _reader(self, sock: socket.socket) -> None:
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self._dispatch(json.loads(line))
        with self._lock:
            waiting = list(self._waiting.values())
        for q in waiting:
            q.put(None)  # wake requests whose answer will never come
        if not self._closed and sock is self._sock:
            self._connected.clear()
            self._reconnect()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "event" in msg:
            call = self._calls.get(msg.get("call", ""))
            if call is not None:
                call.events.append(msg)
            if self.on_event:
                self.on_event(msg)
            return
        q = self._waiting.get(msg.get("id"))  # type: ignore[arg-type]
        if q is not None:
            q.put(msg)

    def _reconnect(self) -> None:
        """The daemon went away (restart): reconnect and claim our running calls."""
        deadline = time.monotonic() + RECONNECT_WINDOW_S
        while not self._closed and time.monotonic() < deadline:
            try:
                self._sock = self._connect()
                self._request("hello", {"version": PROTOCOL_VERSION, "client": "agentcg-py"})
                for call in list(self._calls.values()):
                    self._claim(call)
                self._connected.set()
                return
            except AgentcgError:
                with contextlib.suppress(OSError):
                    self._sock.close()
                time.sleep(0.2)

    def _claim(self, call: ToolCall) -> None:
        try:
            self._request("call.claim", {"call": call.id, "token": call.token})
        except _NotSent:
            raise
        except AgentcgError as e:
            if e.code != "not_found":
                raise
            # It finished while the daemon was down; the restarted daemon removed it.
            self._calls.pop(call.id, None)

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and wait for its answer; raises AgentcgError."""
        for attempt in range(2):
            if not self._connected.wait(RECONNECT_WINDOW_S):
                raise AgentcgError(
                    "unavailable",
                    f"the agentcg daemon at {self.path} did not come "
                    "back; check `systemctl status agentcg`",
                )
            try:
                return self._request(op, args)
            except _NotSent:
                # The daemon went away before our reader noticed; nothing was
                # processed, so one retry after the reconnect is safe.
                if attempt:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def _request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        rid = next(self._ids)
        q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        frame = json.dumps({"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args}).encode()
        with self._lock:
            self._waiting[rid] = q
        try:
            try:
                self._sock.sendall(frame + b"\n")
            except OSError as e:
                raise _NotSent(
                    "unavailable", f"lost the agentcg daemon ({e.strerror}); retry when it is back"
                ) from e
            try:
                msg = q.get(timeout=self.timeout)
            except queue.Empty:
                raise AgentcgError(
                    "timeout",
                    f"no answer to {op} within {self.timeout:.0f}s; is the daemon overloaded?",
                ) from None
        finally:
            with self._lock:
                self._waiting.pop(rid, None)
        if msg is None:
            raise AgentcgError(
                "unavailable",
                f"the daemon closed the connection during {op}; retry when it is back",
            )
        if not msg.get("ok"):
            raise AgentcgError.from_dict(msg.get("error"))
        return msg["result"]

    def open_session(self, name: str | None = None, **args: Any) -> str:
        if name is not None:
            args["name"] = name
        return self.request("session.open", **args)["session"]

    def close_session(self, name: str) -> dict[str, Any]:
        return self.request("session.close", session=name)

    def tool_call(self, session: str | None = None, **intent: Any) -> ToolCall:
        """intent: memory, priority, latency_sensitive, cpu, pids, timeout, label."""
        return ToolCall(
            self,
            session or os.environ.get("AGENTCG_SESSION"),
            {k: v for k, v in intent.items() if v is not None},
        )

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ToolCall:
    """One tool call: begin on enter, run one or more processes in it, end on exit."""

    def __init__(self, client: Client, session: str | None, intent: dict[str, Any]) -> None:
        self.client = client
        self.session = session
        self.intent = intent
        self.events: list[dict[str, Any]] = []
        self.outcome: dict[str, Any] | None = None
        self.id = ""
        self.token = ""
        self.info: dict[str, Any] = {}

    def begin(self) -> ToolCall:
        args: dict[str, Any] = {"intent": self.intent}
        if self.session:
            args["session"] = self.session
        self.info = self.client.request("call.begin", **args)
        self.id, self.token = self.info["call"], self.info["token"]
        self.client._calls[self.id] = self
        return self

    def _attach_frame(self) -> bytes:
        return (
            json.dumps(
                {
                    "v": PROTOCOL_VERSION,
                    "id": 1,
                    "op": "call.attach",
                    "args": {"call": self.id, "token": self.token},
                }
            ).encode()
            + b"\n"
        )

    def preexec(self) -> Callable[[], None]:
        """A preexec_fn that attaches the forked child before it execs the tool.

        Runs between fork and exec, so it only makes raw syscalls with data
        prepared beforehand; on failure the child exits 126 with a one-line reason.
        """
        frame, path = self._attach_frame(), self.client.path

        def attach() -> None:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                s.sendall(frame)
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                s.close()
            except OSError as e:
                reply = b'{"ok":false,"error":{"message":"' + str(e).encode() + b'"}}'
            if b'"ok":true' not in reply:
                os.write(2, b"agentcg: could not place the tool in its cgroup: " + reply)
                os._exit(126)

        return attach

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        if not self.id:
            self.begin()
        return subprocess.Popen(argv, preexec_fn=self.preexec(), **kwargs)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside this call's cgroup, wait, and end the call."""
        proc = self.popen(argv, **kwargs)
        out, err = proc.communicate()
        self.end(proc.returncode)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def end(self, exit_status: int | None = None) -> dict[str, Any]:
        if self.outcome is not None:
            return self.outcome
        args: dict[str, Any] = {"call": self.id, "token": self.token}
        if exit_status is not None:
            args["exit_status"] = exit_status
        deadline = time.monotonic() + RECONNECT_WINDOW_S
        while True:
            try:
                self.outcome = self.client.request("call.end", **args)
                break
            except AgentcgError as e:
                # The daemon may be restarting; it keeps the call for us meanwhile.
                if e.code != "unavailable" or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.client._calls.pop(self.id, None)
        return self.outcome

    def __enter__(self) -> ToolCall:
        return self.begin()

    def __exit__(self, *exc: object) -> None:
        if self.outcome is None and self.id:
            self.end()

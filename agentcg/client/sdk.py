"""Agent-side SDK: open a session, wrap each tool call, get its outcome.

    with Client() as client:
        with client.tool_call(memory="2G", priority="high", label="pytest") as call:
            proc = call.run(["pytest", "-x"])
        print(call.outcome["peak_memory"], call.outcome["advice"])

The tool process is placed into its cgroup by the daemon before it execs: the
forked child connects on its own, sends call.attach, and the daemon moves the
pid the kernel reports for that connection (SO_PEERCRED). The agent never
needs write access to cgroupfs. The attach socket is created in the parent;
the child only connects it, so popen()/run() take no preexec_fn of their own.

If the daemon restarts, the client reconnects and re-claims its running calls;
a call that finished while the daemon was down ends with a minimal outcome
marked ``"recovered": True`` (exit status known, statistics lost).
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

from agentcg.core.errors import AgentcgError

# Annotations only (never evaluated): importing typing would slow `agentcg run`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The wire version this SDK speaks (the daemon negotiates it in hello). Not imported
# from agentcg.core.protocol: that is the daemon's validator, and `agentcg run` starts
# faster without it.
PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/agentcg/agentcg.sock"
RECONNECT_WINDOW_S = 60.0  # how long to wait for a restarting daemon
_HELLO = {"version": PROTOCOL_VERSION, "client": "agentcg-py"}


class _NotSent(AgentcgError):
    """The request never reached the daemon (on connection generation ``gen``)."""

    def __init__(self, code: str, message: str, *, gen: int) -> None:
        super().__init__(code, message)
        self.gen = gen


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
        # request id -> (answer queue, generation of the connection it was sent on)
        self._waiting: dict[int, tuple[queue.Queue[dict[str, Any] | None], int]] = {}
        self._lock = threading.Lock()  # _waiting, _sock, _gen, reconnect hand-over
        self._send_lock = threading.Lock()  # one frame at a time on the socket
        self._calls: dict[str, ToolCall] = {}
        self._closed = False
        self._connected = threading.Event()  # cleared while reconnecting to a restarted daemon
        self._gen = 0  # bumped per connection; only the current one's reader may reconnect
        self._refused: AgentcgError | None = None  # last id-null error, e.g. busy
        self._sock = self._start()
        try:
            self.server = self._request("hello", _HELLO)
        except AgentcgError as e:
            if isinstance(e, _NotSent):
                # The daemon refused us (busy at max_connections) and closed before our
                # hello went out; its reason may still be unread. The peer is gone, so
                # the reader ends promptly.
                self._reader_thread.join(1.0)
            self.close()
            if e.code == "unavailable" and self._refused is not None:
                raise self._refused from None  # its reason, not "closed the connection"
            raise
        self._connected.set()

    def _start(self) -> socket.socket:
        """Connect, make the socket current (a new generation), then start its reader."""
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
        with self._lock:
            if self._closed:
                sock.close()
                raise AgentcgError("unavailable", "the client is closed")
            # Assigned before the reader starts, so the reader sees its own socket as current.
            self._gen += 1
            gen = self._gen
            self._sock = sock
        self._reader_thread = threading.Thread(target=self._reader, args=(sock, gen), daemon=True)
        self._reader_thread.start()
        return sock

    def _reader(self, sock: socket.socket, gen: int) -> None:
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
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # not ours to crash on; the request times out instead
                if isinstance(msg, dict):
                    self._dispatch(msg, sock, gen)
        with self._lock:
            # Only the reader of the current, established connection reconnects; a
            # stale socket or a failed reconnect attempt just goes away.
            reconnect = gen == self._gen and self._connected.is_set() and not self._closed
            if reconnect:
                self._connected.clear()
        with self._send_lock:  # never close under a concurrent sendall
            sock.close()
        with self._lock:
            waiting = [q for q, g in self._waiting.values() if g == gen]
        for q in waiting:
            q.put(None)  # wake requests whose answer will never come
        if reconnect:
            self._reconnect()

    def _dispatch(self, msg: dict[str, Any], sock: socket.socket, gen: int) -> None:
        if "event" in msg:
            call = self._calls.get(msg.get("call", ""))
            if call is not None:
                call.events.append(msg)
            if self.on_event:
                self.on_event(msg)
            return
        rid = msg.get("id")
        with self._lock:
            if rid is None and not msg.get("ok"):
                # An error the daemon could not tie to a request (busy, frame_too_large,
                # timeout) comes just before it closes: every waiter here gets the reason.
                self._refused = AgentcgError.from_dict(msg.get("error"))
                targets = [q for q, g in self._waiting.values() if g == gen]
                # Send nothing more on it: a later request fails to send (_NotSent) and
                # is retried after the reconnect instead of being lost with the socket.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            else:
                entry = self._waiting.get(rid)  # type: ignore[arg-type]
                targets = [entry[0]] if entry is not None else []
        for q in targets:
            q.put(msg)

    def _reconnect(self) -> None:
        """The daemon went away (restart): reconnect and claim our running calls."""
        deadline = time.monotonic() + RECONNECT_WINDOW_S
        while not self._closed and time.monotonic() < deadline:
            try:
                sock = self._start()
            except AgentcgError:
                time.sleep(0.2)
                continue
            try:
                self._request("hello", _HELLO)
                for call in list(self._calls.values()):
                    self._claim(call)
                self._connected.set()
                return
            except AgentcgError:
                # Shutting it down ends the attempt's reader, which closes the socket.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
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
        return self._call(op, args, 0.0)

    def _call(self, op: str, args: dict[str, Any], patience: float) -> dict[str, Any]:
        """request(), for one that the daemon may hold up to `patience` s before it answers."""
        for attempt in range(2):
            if not self._connected.wait(RECONNECT_WINDOW_S):
                raise AgentcgError(
                    "unavailable",
                    f"the agentcg daemon at {self.path} did not come "
                    "back; check `systemctl status agentcg`",
                )
            try:
                return self._request(op, args, patience)
            except _NotSent as e:
                # The daemon went away before our reader noticed; nothing was
                # processed, so one retry on the next connection is safe.
                if attempt or self._closed:
                    raise
                deadline = time.monotonic() + RECONNECT_WINDOW_S
                while self._gen == e.gen and not self._closed and time.monotonic() < deadline:
                    time.sleep(0.05)
        raise AssertionError("unreachable")

    def _request(self, op: str, args: dict[str, Any], patience: float = 0.0) -> dict[str, Any]:
        rid = next(self._ids)
        q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        frame = json.dumps({"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args}).encode()
        with self._lock:
            sock, gen = self._sock, self._gen
            self._waiting[rid] = (q, gen)
        try:
            try:
                with self._send_lock:
                    sock.sendall(frame + b"\n")
            except OSError as e:
                raise _NotSent(
                    "unavailable",
                    f"lost the agentcg daemon ({e.strerror}); retry when it is back",
                    gen=gen,
                ) from e
            try:
                msg = q.get(timeout=self.timeout + patience)
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

    def tool_call(self, session: str | None = None, wait_s: float = 0.0, **intent: Any) -> ToolCall:
        """intent: memory, priority, latency_sensitive, cpu, pids, timeout, label.

        When the session already runs its max_calls, begin() waits up to `wait_s`
        seconds for a slot, first come first served (the daemon caps the wait at its
        session.max_wait_s and sends a "waiting" event first); 0 fails at once with
        limit_exceeded."""
        return ToolCall(
            self,
            session or os.environ.get("AGENTCG_SESSION"),
            {k: v for k, v in intent.items() if v is not None},
            wait_s,
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sock = self._sock
        # shutdown wakes the reader; it closes the socket under the send lock.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ToolCall:
    """One tool call: begin on enter, run one or more processes in it, end on exit."""

    def __init__(
        self, client: Client, session: str | None, intent: dict[str, Any], wait_s: float = 0.0
    ) -> None:
        self.client = client
        self.session = session
        self.intent = intent
        self.wait_s = wait_s
        self.events: list[dict[str, Any]] = []
        self.outcome: dict[str, Any] | None = None
        self.id = ""
        self.token = ""
        self.info: dict[str, Any] = {}
        self._began_on = -1

    def begin(self) -> ToolCall:
        args: dict[str, Any] = {"intent": self.intent}
        if self.session:
            args["session"] = self.session
        if self.wait_s:
            args["wait_s"] = self.wait_s
        self.info = self.client._call("call.begin", args, self.wait_s)
        self.id, self.token = self.info["call"], self.info["token"]
        self._began_on = self.client._gen  # which connection (daemon instance) saw the begin
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

    def preexec(self) -> _Attach:
        """A preexec_fn that attaches the forked child before it execs the tool.

        The socket, the frame, the reply buffer and the failure message are all made
        here, in the parent: between fork and exec (in a process that may have other
        threads) the child only connects, sends and reads. On failure the child exits
        126 with a one-line reason on stderr. Close the returned object in the parent
        once Popen has returned.
        """
        return _Attach(
            self.client.path,
            self._attach_frame(),
            f"agentcg: could not place the tool in its cgroup (call.attach {self.id} "
            f"via {self.client.path}); not running it\n".encode(errors="replace"),
            self.client.timeout,
        )

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        if "preexec_fn" in kwargs:
            raise TypeError(
                "ToolCall.popen()/run() use preexec_fn to attach the tool to its cgroup; "
                "a caller's preexec_fn is not supported (use start_new_session=, user=, "
                "group=, umask=, process_group= or a wrapper command instead)"
            )
        if not self.id:
            self.begin()
        attach = self.preexec()
        try:
            return subprocess.Popen(argv, preexec_fn=attach, **kwargs)
        finally:
            attach.close()  # the child has its own copy of the socket (or none was forked)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside this call's cgroup, wait, and end the call."""
        if kwargs.pop("capture_output", False):
            if "stdout" in kwargs or "stderr" in kwargs:
                raise ValueError("stdout and stderr arguments may not be used with capture_output")
            kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
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
                if e.code == "not_found" and self.token and self.client._gen != self._began_on:
                    # Ours, but it finished while the daemon was down and the restarted
                    # daemon removed it: its statistics are gone, its status is not.
                    # (On the connection that began it, not_found means it really ended.)
                    self.outcome = recovered_outcome(self, exit_status)
                    break
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


class _Attach:
    """preexec_fn for one child: connect the pre-made socket, send call.attach, check."""

    def __init__(self, path: str, frame: bytes, failure: bytes, timeout: float) -> None:
        # Created in the parent. The child's connect() is what SO_PEERCRED records,
        # so the daemon sees the child's pid. Non-inheritable: gone at exec.
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)  # a hung daemon fails the child instead of hanging it
        self.path = path
        self.frame = frame
        self.failure = failure
        self.reply = bytearray(4096)
        self.view = memoryview(self.reply)

    def __call__(self) -> None:
        n = 0
        try:
            self.sock.connect(self.path)
            self.sock.sendall(self.frame)
            while n < len(self.reply):
                got = self.sock.recv_into(self.view[n:])
                if not got:
                    break
                n += got
                if self.reply.find(b"\n", 0, n) >= 0:
                    break
        except BaseException:  # anything: the child must exit 126, not run unattached
            pass
        if self.reply.find(b'"ok":true', 0, n) >= 0:
            return
        try:
            os.write(2, self.failure)
            if n:
                os.write(2, self.view[:n])  # the daemon's error line, e.g. unauthorized
        finally:
            os._exit(126)

    def close(self) -> None:
        self.sock.close()


def recovered_outcome(call: ToolCall, exit_status: int | None) -> dict[str, Any]:
    """The outcome of a call the restarted daemon no longer knows (same keys as
    policy.Outcome.to_dict, plus "recovered": True): status as we saw it, no stats."""
    limits = call.info.get("limits") or {}
    return {
        "call": call.id,
        "label": call.intent.get("label", "tool"),
        "exit_status": exit_status if exit_status is not None and exit_status >= 0 else None,
        "signal": -exit_status if exit_status is not None and exit_status < 0 else None,
        "duration_s": 0.0,
        "peak_memory": 0,
        "memory_requested": limits.get("memory_high"),
        "cpu_usage_us": 0,
        "cpu_throttled_us": 0,
        "memory_high_events": 0,
        "oom_kills": 0,
        "pressure_some_us": 0,
        "frozen": False,
        "killed_reason": None,
        "advice": None,
        "suggested_memory": None,
        "sched": None,
        "recovered": True,
    }

"""Agent-side SDK: open a session, wrap each tool call, get its outcome.

    with Client() as client:
        with client.tool_call(memory="2G", priority="high", label="pytest") as call:
            proc = call.run(["pytest", "-x"])
        print(call.outcome["peak_memory"], call.outcome["advice"])

The tool process is placed into its cgroup by the daemon before it execs: the
forked child sends call.attach with its own pid on its parent's connection and
waits at a gate (see Gate); the daemon checks with the kernel that the pid is the
connected process's child and moves it. The agent never needs write access to
cgroupfs, and popen()/run() take no preexec_fn of their own.

If the daemon restarts, the client reconnects and re-claims its running calls;
a call that finished while the daemon was down ends with a minimal outcome
marked ``"recovered": True`` (exit status known, statistics lost).
"""

from __future__ import annotations

import _socket
import _thread
import os
import time
from collections.abc import Sequence
from select import POLLIN, poll

from agentcg.client import wire
from agentcg.client.connection import PROTOCOL_VERSION, RECONNECT_WINDOW_S, Connection
from agentcg.client.connection import socket_path as socket_path
from agentcg.core.errors import AgentcgError

# Annotations only (never evaluated): importing typing would slow `agentcg run`, and
# `agentcg run` forks the tool itself, without subprocess (~13 ms to import).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

_MAX_VERDICT = 4096  # one pipe write of at most PIPE_BUF arrives whole


class Client(Connection):
    """The agent's side of one connection to the daemon: its sessions and tool calls."""

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

    def gate(self) -> Gate:
        """Hold a forked child before it execs the tool until the daemon has moved it
        into this call. In the parent: `with call.gate() as gate:` around the fork;
        pass `gate` as the child's preexec_fn (or call it in the child of a plain fork,
        as `agentcg run` does). The child exits 126 if the daemon would not place it."""
        return Gate(self)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen inside this call's cgroup. user=/group=/extra_groups= take
        effect before the gate, and the daemon attaches a child whose ids differ from
        its agent's only for an admin agent (else the child exits 126)."""
        if "preexec_fn" in kwargs:
            raise TypeError(
                "ToolCall.popen()/run() use preexec_fn to attach the tool to its cgroup; "
                "a caller's preexec_fn is not supported (use start_new_session=, umask=, "
                "process_group= or a wrapper command instead)"
            )
        import subprocess

        if not self.id:
            self.begin()
        with self.gate() as gate:
            return subprocess.Popen(argv, preexec_fn=gate, **kwargs)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside this call's cgroup, wait, and end the call."""
        import subprocess

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


class Gate:
    """A forked child's wait between fork and exec while the daemon moves it.

    The child sends `call.attach {pid: <its own pid>}` itself, on its parent's
    connection (one frame, made in the parent but for the pid), and waits on a pipe.
    The daemon sees the parent as the sender (SO_PEERCRED) and checks with the kernel
    that the pid is the parent's child. The parent's reader thread gets the answer and
    writes b"1" (exec) or b"0" and the reason (the child prints it and exits 126,
    running nothing) into the pipe. From entering the gate until leaving it the parent
    holds the connection's send lock: the child's frame is the only one on the socket,
    other threads' requests on this Client wait, and none may be made from inside the
    `with` block.

    The child connects on its own and attaches itself instead, the daemon taking its
    pid from SO_PEERCRED, when another request is pending on the parent's connection
    (the daemon answers a connection's requests in order, and one may wait long, e.g.
    a call.begin for a slot), and when the parent is in a pid namespace of its own (a
    container): it does not know its child's pid as the daemon sees it. Between fork
    and exec the child only writes, waits (poll, up to the client's timeout) and
    reads. Every socket is close-on-exec: the tool never holds one.
    """

    def __init__(self, call: ToolCall) -> None:
        client = call.client
        self.client = client
        self.failure = (
            f"agentcg: could not place the tool in its cgroup (call.attach {call.id} "
            f"via {client.path}); not running it\n"
        ).encode(errors="replace")
        self._timeout_ms = int(client.timeout * 1000)
        self._rid = next(client._ids)
        args = {"call": call.id, "token": call.token}
        frame = wire.dumps(
            {"v": PROTOCOL_VERSION, "id": self._rid, "op": "call.attach", "args": args}
        )
        # By pid the frame ends '..., "pid": <pid>}}\n'; the child adds its pid.
        by_pid = (client.server.get("peer") or {}).get("pid") == os.getpid()
        self._head = (frame[:-2] + ', "pid": ').encode() if by_pid else b""
        self._frame = frame.encode() + b"\n"
        self._sock: _socket.socket | None = None
        self._lent = False
        self._lock = _thread.allocate_lock()  # put() against closing the pipe
        self._closed = False
        self._go_r, self._go_w = os.pipe()
        self._poll = poll()
        self._poll.register(self._go_r, POLLIN)

    def __enter__(self) -> Gate:
        try:
            if self._head:
                self._sock = self.client._lend(self._rid, self)
                self._lent = self._sock is not None
                if not self._lent:
                    self._head = b""  # another request is pending: attach on our own
            if not self._lent:
                self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                self._sock.settimeout(self._timeout_ms / 1000)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lent:
            self.client._unlend(self._rid)
        self._close()

    def put(self, msg: dict[str, Any] | None) -> None:
        """From the parent's reader thread: the daemon's answer, or None when it will
        never come. Only the first counts, and none once the gate is closed."""
        if msg is not None and msg.get("ok"):
            verdict = b"1"
        else:
            error = (msg or {}).get("error") or {}
            reason = error.get("message", "the daemon closed the connection")
            code = error.get("code", "unavailable")
            verdict = f"0{code}: {reason}\n".encode(errors="replace")[:_MAX_VERDICT]
        with self._lock:
            if self._closed:
                return
            self._closed = True  # answered: a later put() writes nothing
            os.write(self._go_w, verdict)  # at most PIPE_BUF into an empty pipe

    def __call__(self) -> None:
        """In the child: send the attach, wait for the verdict, exit 126 unless placed."""
        verdict = b""
        try:
            os.close(self._go_w)  # the parent's copy only: EOF if it gives up
            sock = self._sock
            assert sock is not None
            if self._head:
                frame = memoryview(self._head + b"%d}}\n" % os.getpid())
                while frame:  # MSG_NOSIGNAL: SIGPIPE is at its default here
                    frame = frame[sock.send(frame, _socket.MSG_NOSIGNAL) :]
                if self._poll.poll(self._timeout_ms):
                    verdict = os.read(self._go_r, _MAX_VERDICT)
            else:
                verdict = _self_attach(sock, self.client.path, self._frame)
        except BaseException:  # anything: the child must exit 126, not run unattached
            pass
        if verdict == b"1":
            return
        try:
            os.write(2, self.failure + verdict[1:])
        finally:
            os._exit(126)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self._go_r)
            os.close(self._go_w)
        if self._sock is not None and not self._lent:
            self._sock.close()


def _self_attach(sock: _socket.socket, path: str, frame: bytes) -> bytes:
    """In the child: attach on a connection of its own; b"1", or b"0" and the reply."""
    sock.connect(path)
    sock.sendall(frame, _socket.MSG_NOSIGNAL)
    reply = b""
    while b"\n" not in reply and len(reply) < _MAX_VERDICT:
        got = sock.recv(_MAX_VERDICT)
        if not got:
            break
        reply += got
    return b"1" if b'"ok":true' in reply else b"0" + reply  # the daemon's compact JSON


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

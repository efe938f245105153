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

import _socket
import os
import time
from collections.abc import Sequence

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

    def _attach_frame(self) -> bytes:
        return (
            wire.dumps(
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
        """A preexec_fn that attaches the forked child before it execs the tool (for
        Popen, or called in the child of a plain fork as `agentcg run` does).

        The socket, the frame, the reply buffer and the failure message are all made
        here, in the parent: between fork and exec (in a process that may have other
        threads) the child only connects, sends and reads. On failure the child exits
        126 with a one-line reason on stderr. Close the returned object in the parent
        once the child is forked (Popen has returned).
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
        import subprocess

        if not self.id:
            self.begin()
        attach = self.preexec()
        try:
            return subprocess.Popen(argv, preexec_fn=attach, **kwargs)
        finally:
            attach.close()  # the child has its own copy of the socket (or none was forked)

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


class _Attach:
    """preexec_fn for one child: connect the pre-made socket, send call.attach, check."""

    def __init__(self, path: str, frame: bytes, failure: bytes, timeout: float) -> None:
        # Created in the parent. The child's connect() is what SO_PEERCRED records,
        # so the daemon sees the child's pid. Non-inheritable: gone at exec.
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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

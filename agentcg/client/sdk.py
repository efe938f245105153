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

import os
import time
from collections.abc import Sequence
from select import select as _select

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
        if "preexec_fn" in kwargs:
            raise TypeError(
                "ToolCall.popen()/run() use preexec_fn to attach the tool to its cgroup; "
                "a caller's preexec_fn is not supported (use start_new_session=, user=, "
                "group=, umask=, process_group= or a wrapper command instead)"
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
    holds the connection's send lock: the child's frame is the only one on the socket.
    Between fork and exec the child only writes, waits (select, up to the client's
    timeout) and reads. The socket is close-on-exec: the tool never holds it.
    """

    def __init__(self, call: ToolCall) -> None:
        client = call.client
        self.client = client
        self.failure = (
            f"agentcg: could not place the tool in its cgroup (call.attach {call.id} "
            f"via {client.path}); not running it\n"
        ).encode(errors="replace")
        self._rid = next(client._ids)
        head = {"v": PROTOCOL_VERSION, "id": self._rid, "op": "call.attach"}
        args = {"call": call.id, "token": call.token}
        # '{"v": 1, ..., "args": {"call": ..., "token": ...' + ', "pid": <pid>}}\n'
        self._head = (wire.dumps({**head, "args": args})[:-2] + ', "pid": ').encode()
        self._timeout = client.timeout
        self._sock = -1
        self._answered = False
        self._go_r, self._go_w = os.pipe()

    def __enter__(self) -> Gate:
        try:
            self._sock = self.client._lend(self._rid, self)
        except BaseException:
            self._close_pipe()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.client._unlend(self._rid)
        self._close_pipe()

    def put(self, msg: dict[str, Any] | None) -> None:
        """From the parent's reader thread: the daemon's answer, or None when it will
        never come. Only the first counts."""
        if self._answered:
            return
        self._answered = True
        if msg is not None and msg.get("ok"):
            verdict = b"1"
        else:
            error = (msg or {}).get("error") or {}
            reason = error.get("message", "the daemon closed the connection")
            verdict = (f"0{error.get('code', 'unavailable')}: {reason}\n").encode(errors="replace")[
                :_MAX_VERDICT
            ]
        try:  # noqa: SIM105 (contextlib is start-up time on the `agentcg run` path)
            os.write(self._go_w, verdict)
        except OSError:
            pass  # the gate was closed: the child is long gone

    def __call__(self) -> None:
        """In the child: send the attach, wait for the verdict, exit 126 unless placed."""
        verdict = b""
        try:
            frame = memoryview(self._head + b"%d}}\n" % os.getpid())
            while frame:
                frame = frame[os.write(self._sock, frame) :]
            if _select([self._go_r], [], [], self._timeout)[0]:
                verdict = os.read(self._go_r, _MAX_VERDICT)
        except BaseException:  # anything: the child must exit 126, not run unattached
            pass
        if verdict == b"1":
            return
        try:
            os.write(2, self.failure + verdict[1:])
        finally:
            os._exit(126)

    def _close_pipe(self) -> None:
        os.close(self._go_r)
        os.close(self._go_w)


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

"""Agent-side SDK: open a session, wrap each tool call, get its outcome.

    with Client() as client:
        with client.tool_call(memory="2G", priority="high", label="pytest") as call:
            proc = call.run(["pytest", "-x"])
        print(call.outcome["peak_memory"], call.outcome["advice"])

The tool process is placed into its cgroup by the daemon before it execs: the
forked child waits at a gate (two pipes) while the parent sends call.attach with
the child's pid on its own connection; the daemon checks with the kernel that the
pid is the asker's child and moves it. The agent never needs write access to
cgroupfs, and popen()/run() take no preexec_fn of their own.

If the daemon restarts, the client reconnects and re-claims its running calls;
a call that finished while the daemon was down ends with a minimal outcome
marked ``"recovered": True`` (exit status known, statistics lost).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

from agentcg.client.connection import RECONNECT_WINDOW_S, Connection
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
        into this call: pass the returned Gate as the child's preexec_fn (or call it in
        the child of a plain fork, as `agentcg run` does), and have the parent release
        it (`Gate.release(pid)`, or `Gate.serve()` for Popen, which returns only after
        the exec). Close it in the parent once the child has exec'd or failed."""
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
        gate = self.gate()
        try:
            helper = gate.serve()
            try:
                return subprocess.Popen(argv, preexec_fn=gate, **kwargs)
            finally:
                gate.close_child_end()  # a child that never reached the gate: EOF for helper
                helper.join()
        finally:
            gate.close()

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
    """A forked child's wait between fork and exec while its parent has the daemon move
    it: the child writes its pid to one pipe and waits on another for b"1" (exec) or
    b"0" and the daemon's reason (it prints both and exits 126, running nothing). The
    parent sends call.attach with that pid on its own connection; the daemon checks
    with the kernel that the pid is the sender's child and applies every check of a
    process attaching itself. Both pipes are made in the parent; between fork and exec
    the child only writes and reads them."""

    def __init__(self, call: ToolCall) -> None:
        self.call = call
        self.failure = (
            f"agentcg: could not place the tool in its cgroup (call.attach {call.id} "
            f"via {call.client.path}); not running it\n"
        ).encode(errors="replace")
        self._pid_r, self._pid_w = os.pipe()
        self._go_r, self._go_w = os.pipe()

    def __call__(self) -> None:
        """In the child: announce itself, wait for the verdict, exit 126 unless placed."""
        verdict = b""
        try:
            os.write(self._pid_w, os.getpid().to_bytes(4, "little"))
            verdict = os.read(self._go_r, _MAX_VERDICT)
        except BaseException:  # anything: the child must exit 126, not run unattached
            pass
        if verdict == b"1":
            return
        try:
            os.write(2, self.failure + verdict[1:])
        finally:
            os._exit(126)

    def release(self, pid: int) -> None:
        """In the parent: have the daemon move child `pid`, then let the child go on."""
        verdict = b"0"
        try:
            self.call.client.request(
                "call.attach", call=self.call.id, token=self.call.token, pid=pid
            )
            verdict = b"1"
        except Exception as e:  # the child says why and exits 126
            verdict = b"0" + f"{e}\n".encode(errors="replace")[: _MAX_VERDICT - 1]
        finally:
            os.write(self._go_w, verdict)

    def serve(self) -> threading.Thread:
        """Release the child from a helper thread, for Popen (which returns only once the
        child has exec'd); join it after Popen returns and close_child_end()."""
        helper = threading.Thread(target=self._serve, name="agentcg-attach", daemon=True)
        helper.start()
        return helper

    def _serve(self) -> None:
        got = b""
        while len(got) < 4:
            chunk = os.read(self._pid_r, 4 - len(got))
            if not chunk:
                return  # the child failed before it reached the gate
            got += chunk
        self.release(int.from_bytes(got, "little"))

    def close_child_end(self) -> None:
        """The parent's copy of the child's end: once closed, a child that exits or
        execs without announcing itself shows as EOF."""
        if self._pid_w >= 0:
            os.close(self._pid_w)
            self._pid_w = -1

    def close(self) -> None:
        self.close_child_end()
        for fd in (self._pid_r, self._go_r, self._go_w):
            os.close(fd)


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

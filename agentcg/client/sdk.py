"""Agent-side SDK: open a session, wrap each tool call, get its outcome.

    with Client() as client:
        with client.tool_call(memory="2G", priority="high", label="pytest") as call:
            proc = call.run(["pytest", "-x"])
        print(call.outcome["peak_memory"], call.outcome["advice"])

The tool process is placed into its cgroup by the daemon before it execs: the
forked child sends call.attach with its own pid on its parent's connection (or, for
a call not begun yet, call.begin with that pid: one round trip for both) and waits
at a gate (see Gate); the daemon checks with the kernel that the pid is the
connected process's child and moves it. The agent never needs write access to
cgroupfs, and popen()/run() take no preexec_fn of their own.

If the daemon restarts, the client reconnects and re-claims its running calls;
a call that finished while the daemon was down ends with a minimal outcome
marked ``"recovered": True`` (exit status known, statistics lost).
"""

from __future__ import annotations

import _thread
import os
import time
from collections.abc import Sequence

from agentcg.client.connection import RECONNECT_WINDOW_S, Connection
from agentcg.client.connection import socket_path as socket_path
from agentcg.client.gate import Gate as Gate
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
        self._id = ""
        self._token = ""
        self._info: dict[str, Any] = {}
        self._began_on = -1
        # Held while a thread begins the call on its own or in a gate, so threads that
        # run processes in one call not begun yet begin it once.
        self._begin_lock = _thread.allocate_lock()

    # Read before the call has begun (in a `with` block, before its first popen() or
    # run()), these begin it, so the call has an id, token and cgroup as soon as asked.
    @property
    def id(self) -> str:
        self._begun()
        return self._id

    @property
    def token(self) -> str:
        self._begun()
        return self._token

    @property
    def info(self) -> dict[str, Any]:
        """call.begin's result: call, token, session, cgroup, limits."""
        self._begun()
        return self._info

    @property
    def began(self) -> bool:
        """Whether the call has begun (without beginning it)."""
        return bool(self._id)

    def _begun(self) -> None:
        if not self._id:
            with self._begin_lock:
                if not self._id:
                    self.begin()

    def begin_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"intent": self.intent}
        if self.session:
            args["session"] = self.session
        if self.wait_s:
            args["wait_s"] = self.wait_s
        return args

    def begin(self) -> ToolCall:
        info = self.client._call("call.begin", self.begin_args(), self.wait_s)
        self._began(info, self.client._gen)
        return self

    def _began(self, info: dict[str, Any], gen: int) -> None:
        self._info = info
        self._id, self._token = info["call"], info["token"]
        self._began_on = gen  # which connection (daemon instance) saw the begin
        self.client._calls[self._id] = self

    def gate(self, combined: bool = False) -> Gate:
        """Hold a forked child before it execs the tool until the daemon has moved it
        into this call. In the parent: `with call.gate() as gate:` around the fork;
        pass `gate` as the child's preexec_fn (or call it in the child of a plain fork,
        as `agentcg run` does). The child exits 126 if the daemon would not place it.

        A call that has not begun begins first; with `combined` (and no wait_s) the
        child's frame begins it and attaches the child in one round trip instead: after
        the fork, `gate.refusal` is the begin's error if there was one (the child then
        exits 126 having run nothing)."""
        return Gate(self, combined)

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

        with self.gate(combined=True) as gate:
            proc = subprocess.Popen(argv, preexec_fn=gate, **kwargs)
        if gate.refusal is not None:
            proc.wait()
            raise gate.refusal
        return proc

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
        args: dict[str, Any] = {"call": self.id, "token": self._token}
        if exit_status is not None:
            args["exit_status"] = exit_status
        deadline = time.monotonic() + RECONNECT_WINDOW_S
        while True:
            try:
                self.outcome = self.client.request("call.end", **args)
                break
            except AgentcgError as e:
                if e.code == "not_found" and self._token and self.client._gen != self._began_on:
                    # Ours, but it finished while the daemon was down and the restarted
                    # daemon removed it: its statistics are gone, its status is not.
                    # (On the connection that began it, not_found means it really ended.)
                    self.outcome = recovered_outcome(self, exit_status)
                    break
                # The daemon may be restarting; it keeps the call for us meanwhile.
                if e.code != "unavailable" or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.client._calls.pop(self._id, None)
        return self.outcome

    def __enter__(self) -> ToolCall:
        """With wait_s, begins here (waiting for a slot); else at the first popen() or
        run(), together with placing the tool (one round trip less), or when id, token
        or info is read."""
        return self.begin() if self.wait_s else self

    def __exit__(self, *exc: object) -> None:
        if self.outcome is None and self._id:
            self.end()


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

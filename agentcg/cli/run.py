"""`agentcg run`: one command as one tool call, behaving like the command itself.

Exit status as a shell gives it: the tool's own, 128+N when a signal ended it (137
when the daemon killed it, also when its session was closed or an admin ended the call
meanwhile), 127 for a command that does not exist and 126 for one that cannot run.
SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the wrapper reach the tool; the same
signals from the terminal already reach it (same process group) and are not sent twice.
The tool gets the wrapper's stdin, stdout, stderr and every other descriptor the
wrapper inherited (e.g. `<(...)` or a jobserver's pipe), as if it were run directly.

The tool is started with fork and exec, not `subprocess` (whose import alone took
~13 ms, a third of this wrapper's start-up; docs/benchmarks.md), and the signals are
handled through `_signal`, the C module behind `signal`.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable, Sequence

from agentcg.client import wire
from agentcg.core.errors import AgentcgError

# Annotations only (never evaluated): importing typing would slow `agentcg run`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any

    from agentcg.client.gate import Gate
    from agentcg.client.sdk import ToolCall
else:
    # The C module behind `signal`, without the enums signal.py builds at import (~1 ms).
    import _signal as signal

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
SI_KERNEL = 0x80  # si_code of a signal the kernel sent itself, e.g. the tty's ^C to a group
# Ignored by the interpreter at start-up; an ignored signal stays ignored across exec, so
# the tool gets them back at their defaults (as subprocess's restore_signals does).
RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)


def _on_event(msg: dict[str, Any]) -> None:
    if msg["event"] == "waiting":  # the session is full: call.begin waits for a slot
        print(f"agentcg: {msg['data']['message']}", file=sys.stderr, flush=True)
    elif msg["event"] in ("limit_raised", "throttled", "frozen", "thawed", "oom", "killed"):
        print(
            f"agentcg: tool call {msg['event']}: {wire.dumps(msg['data'])}",
            file=sys.stderr,
            flush=True,
        )


def _cannot_run(command: Sequence[str], e: OSError) -> int:
    print(f"agentcg: {command[0]}: {e.strerror}", file=sys.stderr, flush=True)
    return 127 if e.errno == errno.ENOENT else 126


def _status(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def _spawn(command: Sequence[str], gate: Gate, mask: Iterable[int]) -> int:
    """Fork; the child waits at the gate until the daemon has placed it (or exits 126),
    restores the signals and execs `command`. The child's pid; the exec's OSError is
    raised here, in the parent (as subprocess.Popen does)."""
    failed, exec_failed = os.pipe()  # closed on exec: EOF here means the tool runs
    pid = os.fork()
    if pid == 0:
        try:
            os.close(failed)
            gate()  # exits 126 if the daemon would not place it
            for sig in RESTORED:
                signal.signal(sig, signal.SIG_DFL)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                # As exec would reset it: a ^C pending here ends the tool, not this code.
                signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.execvp(command[0], list(command))
        except OSError as e:
            os.write(exec_failed, str(e.errno).encode())
        finally:
            os._exit(127)  # never back into the parent's code
    os.close(exec_failed)
    try:
        code = os.read(failed, 32)
    finally:
        os.close(failed)
    if code:
        os.waitpid(pid, 0)
        raise OSError(int(code), os.strerror(int(code)))
    return pid


def _start(call: ToolCall, command: Sequence[str], mask: Iterable[int]) -> int:
    """Spawn `command` in `call` (begun with the placement if it has not begun); the
    child's pid. Raises the begin's refusal (nothing ran) or the exec's OSError."""
    with call.gate(combined=True) as gate:
        pid = _spawn(command, gate, mask)
    if gate.refusal is not None:
        os.waitpid(pid, 0)
        raise gate.refusal
    return pid


def _wait(pid: int, waited: Iterable[int]) -> int:
    """Wait for the tool, forwarding the signals the wrapper gets; its returncode."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD and info.si_code != SI_KERNEL:
            os.kill(pid, info.si_signo)  # not reaped yet: still our child's pid


def run_tool(
    command: Sequence[str],
    session: str | None,
    json_out: bool,
    intent: dict[str, Any],
    wait_s: float = 0.0,
) -> int:
    """Run `command` as one tool call; the exit status for the wrapper. When the session
    already runs its max_calls, wait up to `wait_s` for a slot (the daemon says so)."""
    from agentcg.client import Client

    # Blocked before the client's reader thread exists, so no thread takes these
    # signals by default action; the main thread waits for them below.
    waited = {*FORWARDED, signal.SIGCHLD}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    with Client(on_event=_on_event) as client:
        if client.server.get("call"):
            # Already inside a tool call (a shim wrapping every command): the
            # command belongs to that call, so just run it.
            client.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            try:
                os.execvp(command[0], list(command))
            except OSError as e:
                return _cannot_run(command, e)
        # First without waiting: the child's frame begins the call and places it (one
        # round trip); only a full session costs a second begin, which waits its turn.
        call = client.tool_call(session=session, **intent)
        try:
            pid = _start(call, command, mask)
        except AgentcgError as e:
            if e.code != "limit_exceeded" or not wait_s or call.began:
                raise
            call = client.tool_call(session=session, wait_s=wait_s, **intent)
            # Interruptible while it waits for a slot (^C raises KeyboardInterrupt here).
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            try:
                call.begin()
            finally:
                signal.pthread_sigmask(signal.SIG_BLOCK, waited)
            pid = _start(call, command, mask)
        except OSError as e:
            if call.began:
                call.end(127 if e.errno == errno.ENOENT else 126)
            return _cannot_run(command, e)
        status = _wait(pid, waited)
        try:
            outcome = call.end(status)
        except AgentcgError as e:
            if e.code not in ("not_found", "conflict"):
                raise
            print(
                "agentcg: the daemon ended this tool call (its session was closed or an "
                "admin ended it)",
                file=sys.stderr,
                flush=True,
            )
            return _status(status)
    if json_out:
        print(wire.dumps(outcome), file=sys.stderr)
    if outcome.get("advice"):
        print(f"agentcg: {outcome['advice']}", file=sys.stderr)
    return _status(status)

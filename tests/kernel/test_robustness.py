"""Hostile and broken clients: the daemon answers every bad input with a structured
error, keeps serving everyone else, loses no state, and its authorization holds.

Most tests talk raw sockets, because the SDK would refuse to send the bad input.
Processes that must be another uid, or must not descend from a call's owner, are
forked children that report back over a socketpair (no re-import under TCG).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentcg.client import Client
from agentcg.core.errors import AgentcgError
from agentcg.kernel.cgroup import find_cgroup2_mount
from tests.kernel.daemon_fixture import RunningDaemon

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
MAX_FRAME = 65536
WAIT_S = 30.0  # generous: the VM emulates its CPU


# --------------------------------------------------------------------------- raw wire


class Raw:
    """One raw connection to the daemon: send bytes, read frames, see it close."""

    def __init__(self, d: RunningDaemon) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(d.socket))
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self.next_id = 1000

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, timeout: float = WAIT_S) -> dict[str, Any] | None:
        """The next response (events are kept aside); None when the daemon closed."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                msg = json.loads(line)
                if "event" in msg:
                    self.events.append(msg)
                    continue
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no frame within {timeout}s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk

    def request(self, op: str, v: int | None = 1, **args: Any) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "op": op, "args": args}
        if v is not None:
            msg["v"] = v
        self.send(json.dumps(msg).encode() + b"\n")
        reply = self.frame()
        assert reply is not None, f"daemon closed the connection on {op}"
        assert reply["id"] == self.next_id
        return reply

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        reply = self.request(op, **args)
        assert reply["ok"] is True, reply
        return reply["result"]

    def closed(self, timeout: float = WAIT_S) -> bool:
        """True once the daemon closes this connection (any pending frames discarded)."""
        try:
            while (msg := self.frame(timeout)) is not None:
                pass
        except TimeoutError:
            return False
        return msg is None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assert_error(reply: dict[str, Any] | None, code: str, rid: Any = None) -> None:
    assert reply is not None, f"expected {code}, the daemon closed the connection"
    assert reply["ok"] is False, reply
    assert set(reply) == {"id", "ok", "error"}, reply
    assert set(reply["error"]) == {"code", "message"}, reply
    assert reply["error"]["code"] == code, reply
    msg = reply["error"]["message"]
    assert isinstance(msg, str) and msg and "\n" not in msg, reply
    assert reply["id"] == rid, reply


def frame(**obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


HELLO = frame(v=1, id=1, op="hello", args={"version": 1})


def assert_serves(d: RunningDaemon) -> None:
    """The daemon process lives and a brand-new agent completes a real tool call."""
    assert d.proc is not None and d.proc.poll() is None, "daemon died"
    with Client(timeout=WAIT_S * 2) as c, c.tool_call(memory="32M", label="true") as call:
        assert call.run(["true"]).returncode == 0
    assert call.outcome is not None and call.outcome["exit_status"] == 0
    assert call.outcome["killed_reason"] is None


def no_tracebacks(d: RunningDaemon) -> None:
    text = d.log.read_text(errors="replace")
    assert "Traceback" not in text and "never retrieved" not in text, text[-4000:]


def wait_until(pred: Callable[[], bool], timeout: float = WAIT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rindex(")") + 2] in "ZX"  # a zombie has run its last instruction


# --------------------------------------------------------------------------- forked peers


class Chan:
    """JSON lines over one end of a socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, obj: Any) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self, timeout: float = WAIT_S * 4) -> Any:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("forked peer exited without answering")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


class Forked:
    """Run fn(chan) in a forked child, optionally as another uid/gid.

    The child never returns into pytest: it exits with os._exit whatever happens,
    after sending {"crash": ...} if fn raised.
    """

    def __init__(self, fn: Callable[[Chan], None], uid: int | None = None) -> None:
        mine, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:  # child
            status = 0
            try:
                mine.close()
                if uid is not None:
                    os.setgroups([])
                    os.setresgid(uid, uid, uid)
                    os.setresuid(uid, uid, uid)
                fn(Chan(theirs))
            except BaseException as e:  # report, never unwind into pytest
                status = 1
                with contextlib.suppress(BaseException):
                    Chan(theirs).send({"crash": repr(e)})
            finally:
                os._exit(status)
        theirs.close()
        self.chan = Chan(mine)

    def recv(self) -> Any:
        msg = self.chan.recv()
        assert not (isinstance(msg, dict) and "crash" in msg), msg
        return msg

    def send(self, obj: Any) -> None:
        self.chan.send(obj)

    def wait(self) -> int:
        deadline = time.monotonic() + WAIT_S
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
            time.sleep(0.02)


def raw_code(d: RunningDaemon, op: str, **args: Any) -> str:
    """Send one request on a fresh connection; "ok" or the error code (for forked peers)."""
    with Raw(d) as r:
        reply = r.request(op, **args)
    return "ok" if reply["ok"] else reply["error"]["code"]


# --------------------------------------------------------------------------- malformed input

# (label, bytes to send after a successful hello, expected code, expected id)
MALFORMED: list[tuple[str, bytes, str, Any]] = [
    ("not json", b"{not json\n", "bad_json", None),
    ("truncated json", b'{"v":1,"id":3,"op":\n', "bad_json", None),
    ("NaN", b'{"v":1,"id":3,"op":"hello","args":{"version":NaN}}\n', "bad_json", None),
    ("duplicate key", b'{"v":1,"id":3,"id":4,"op":"hello"}\n', "bad_json", None),
    ("deep nesting", b"[" * 30000 + b"]" * 30000 + b"\n", "bad_json", None),
    ("array", b"[1,2,3]\n", "bad_request", None),
    ("string", b'"hello"\n', "bad_request", None),
    ("number", b"42\n", "bad_request", None),
    ("null", b"null\n", "bad_request", None),
    ("empty line", b"\n", "bad_frame", None),
    ("blank line", b"   \r\n", "bad_frame", None),
    ("invalid utf-8", b'{"v":1,"id":3,"op":"hel\xff\xfelo"}\n', "bad_frame", None),
    ("lone surrogate bytes", b'{"v":1,"id":3,"op":"\xed\xa0\x80"}\n', "bad_frame", None),
    ("no id", frame(v=1, op="hello", args={"version": 1}), "bad_request", None),
    ("bool id", frame(v=1, id=True, op="hello", args={"version": 1}), "bad_request", None),
    ("float id", frame(v=1, id=1.5, op="hello", args={"version": 1}), "bad_request", None),
    ("huge id", frame(v=1, id=2**64, op="hello", args={"version": 1}), "bad_request", None),
    ("long id", frame(v=1, id="x" * 65, op="hello", args={"version": 1}), "bad_request", None),
    ("no op", frame(v=1, id=3), "bad_request", 3),
    ("op not a string", frame(v=1, id=3, op=["hello"]), "bad_request", 3),
    ("unknown op", frame(v=1, id="u", op="session.destroy"), "unknown_op", "u"),
    ("unknown top-level field", frame(v=1, id=3, op="list", admin=True), "unknown_field", 3),
    (
        "unknown args field",
        frame(v=1, id=3, op="session.open", args={"sudo": 1}),
        "unknown_field",
        3,
    ),
    (
        "unknown intent field",
        frame(v=1, id=3, op="call.begin", args={"intent": {"memory": "1G", "root": True}}),
        "unknown_field",
        3,
    ),
    ("args not an object", frame(v=1, id=3, op="hello", args=[1]), "invalid_value", 3),
    ("v is a string", frame(v="1", id=3, op="hello", args={"version": 1}), "invalid_value", 3),
    ("v is 2", frame(v=2, id=3, op="hello", args={"version": 1}), "unsupported_version", 3),
    ("hello without version", frame(v=1, id=3, op="hello", args={}), "bad_request", 3),
    ("hello version 0", frame(v=1, id=3, op="hello", args={"version": 0}), "invalid_value", 3),
    ("hello version str", frame(v=1, id=3, op="hello", args={"version": "1"}), "invalid_value", 3),
    ("memory bool", frame(v=1, id=3, op="session.open", args={"memory": True}), "invalid_value", 3),
    (
        "memory negative",
        frame(v=1, id=3, op="session.open", args={"memory": -1}),
        "invalid_value",
        3,
    ),
    ("pids string", frame(v=1, id=3, op="session.open", args={"pids": "7"}), "invalid_value", 3),
    ("cpu zero", frame(v=1, id=3, op="session.open", args={"cpu": 0}), "invalid_value", 3),
    ("adopt int", frame(v=1, id=3, op="session.open", args={"adopt": 1}), "invalid_value", 3),
    (
        "intent not object",
        frame(v=1, id=3, op="call.begin", args={"intent": "big"}),
        "invalid_value",
        3,
    ),
    (
        "intent memory junk",
        frame(v=1, id=3, op="call.begin", args={"intent": {"memory": "lots"}}),
        "invalid_value",
        3,
    ),
    (
        "intent timeout negative",
        frame(v=1, id=3, op="call.begin", args={"intent": {"timeout": -5}}),
        "invalid_value",
        3,
    ),
    (
        "call id junk",
        frame(v=1, id=3, op="call.status", args={"call": "../../x"}),
        "invalid_value",
        3,
    ),
    (
        "token junk",
        frame(v=1, id=3, op="call.end", args={"call": "c0123456789ab", "token": "x"}),
        "invalid_value",
        3,
    ),
    (
        "exit status out of range",
        frame(
            v=1,
            id=3,
            op="call.end",
            args={"call": "c0123456789ab", "token": "0" * 32, "exit_status": 256},
        ),
        "invalid_value",
        3,
    ),
    ("missing required arg", frame(v=1, id=3, op="session.close", args={}), "bad_request", 3),
    ("two frames in one line", b'{"v":1,"id":3,"op":"list"}{"v":1}\n', "bad_json", None),
]


def test_malformed_requests_get_structured_errors_and_state_survives(
    daemon: RunningDaemon,
) -> None:
    # State that must outlive the abuse: a session with a running tool call.
    with Client() as keeper:
        keeper.open_session("keeper")
        call = keeper.tool_call(session="keeper", memory="32M", label="sleep").begin()
        tool = call.popen(["sleep", "600"])
        failures = []
        with Raw(daemon) as r:
            r.ok("hello", version=1)
            for label, data, code, rid in MALFORMED:
                r.send(data)
                try:
                    assert_error(r.frame(), code, rid)
                    # The connection stays usable after every recoverable error.
                    assert r.ok("hello", version=1)["version"] == 1
                except AssertionError as e:
                    failures.append(f"{label}: {e}")
        assert not failures, "\n".join(failures)

        status = keeper.request("session.status", session="keeper")
        assert [c["call"] for c in status["calls"]] == [call.id]
        assert status["calls"][0]["state"] == "running"
        assert tool.poll() is None
        tool.kill()
        tool.wait()
        wait_until(
            lambda: keeper.request("call.status", call=call.id)["state"] == "exited",
            what="call.status to show the tool's exit",
        )
        assert call.end(-9)["signal"] == 9
    assert_serves(daemon)
    no_tracebacks(daemon)


def test_first_frame_needs_version(daemon: RunningDaemon) -> None:
    with Raw(daemon) as r:
        # Not only hello: any first request without "v" is refused, with its id echoed.
        assert_error(r.request("list", v=None), "bad_request", r.next_id)
        assert_error(r.request("hello", v=None, version=1), "bad_request", r.next_id)
        assert r.request("hello", v=1, version=1)["ok"]
        # After one good request "v" is optional...
        assert r.request("hello", v=None, version=1)["ok"]
        # ...but a wrong one is still refused.
        assert_error(r.request("hello", v=7, version=1), "unsupported_version", r.next_id)
    with Raw(daemon) as r:
        # A failed first request does not count as the handshake.
        assert_error(r.request("hello", v=1), "bad_request", r.next_id)
        assert_error(r.request("hello", v=None, version=1), "bad_request", r.next_id)
        # The client's highest version may exceed ours: we answer with ours.
        assert r.ok("hello", version=5)["version"] == 1
    assert_serves(daemon)


def test_frame_size_limit(daemon: RunningDaemon) -> None:
    # Exactly max_frame bytes including the newline is allowed.
    body = b'{"v":1,"id":1,"op":"hello","args":{"version":1}'
    with Raw(daemon) as r:
        r.send(body + b" " * (MAX_FRAME - len(body) - 2) + b"}\n")
        reply = r.frame()
        assert reply is not None and reply["ok"], reply
    # A huge frame gets frame_too_large and the connection is closed: the daemon
    # cannot know where the next frame would start.
    with Raw(daemon) as r:
        r.ok("hello", version=1)
        # The daemon may refuse and close before the rest is even sent (EPIPE here).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            r.send(b'{"v":1,"id":2,"op":"hello","args":{"client":"' + b"x" * (3 * MAX_FRAME))
        assert_error(r.frame(), "frame_too_large")
        assert r.closed()
    # One byte over the limit, newline included: refused too.
    with Raw(daemon) as r:
        r.send(body + b" " * (MAX_FRAME - len(body) - 1) + b"}\n")
        assert_error(r.frame(), "frame_too_large")
    assert_serves(daemon)
    no_tracebacks(daemon)


@pytest.mark.parametrize(
    "daemon", ["frame_timeout_s = 2\nidle_timeout_s = 4"], indirect=True, ids=["short_timeouts"]
)
def test_slowloris_and_idle_connections(daemon: RunningDaemon) -> None:
    slow, idle, busy = Raw(daemon), Raw(daemon), Raw(daemon)
    try:
        busy.ok("hello", version=1)
        call = busy.ok("call.begin", intent={"label": "idle"})
        idle.ok("hello", version=1)
        start = time.monotonic()
        slow.send(HELLO[: len(HELLO) // 2])
        # Others are served while the slow frame hangs.
        with Raw(daemon) as other:
            assert other.ok("hello", version=1)["version"] == 1
        assert_error(slow.frame(), "timeout")
        elapsed = time.monotonic() - start
        assert slow.closed()
        assert 1.5 <= elapsed < 2 + WAIT_S, elapsed
        # A connection with nothing running is closed after idle_timeout_s...
        assert_error(idle.frame(), "timeout")
        assert idle.closed()
        # ...but one that owns a call may wait as long as its tool runs.
        time.sleep(max(0.0, start + 6 - time.monotonic()))
        assert busy.ok("call.status", call=call["call"])["state"] == "pending"
        out = busy.ok("call.end", call=call["call"], token=call["token"], exit_status=0)
        assert out["exit_status"] == 0
    finally:
        for r in (slow, idle, busy):
            r.close()
    assert_serves(daemon)
    no_tracebacks(daemon)


@pytest.mark.parametrize("daemon", ["max_requests_per_second = 20"], indirect=True, ids=["rate_20"])
def test_flood_gets_busy_and_connection_stays_usable(daemon: RunningDaemon) -> None:
    n = 300
    with Raw(daemon) as r:
        start = time.monotonic()
        r.send(b"".join(frame(v=1, id=i, op="hello", args={"version": 1}) for i in range(n)))
        replies = [r.frame() for _ in range(n)]
        elapsed = time.monotonic() - start
        assert all(m is not None for m in replies)
        assert [m["id"] for m in replies] == list(range(n))  # answered in order
        codes = ["ok" if m["ok"] else m["error"]["code"] for m in replies]
        assert set(codes) == {"ok", "busy"}, set(codes)
        assert codes[:20] == ["ok"] * 20  # the bucket starts full
        # Never more than the bucket plus its refill rate.
        assert codes.count("ok") <= 20 + 20 * elapsed + 1, (codes.count("ok"), elapsed)
        with Raw(daemon) as other:  # the flood is this connection's problem only
            assert other.ok("hello", version=1)
        time.sleep(1.5)  # the bucket refills
        assert r.ok("hello", version=1)["version"] == 1
    # A flood whose sender vanishes without reading its answers.
    with Raw(daemon) as r:
        r.send(b"".join(frame(v=1, id=i, op="list") for i in range(2000)))
    assert_serves(daemon)
    no_tracebacks(daemon)


def test_many_concurrent_connections(daemon: RunningDaemon) -> None:
    conns = [Raw(daemon) for _ in range(100)]
    try:
        for r in conns:
            r.send(HELLO)
        for r in conns:
            reply = r.frame()
            assert reply is not None and reply["ok"], reply
        # Half of them open sessions at once; all must exist afterwards.
        for i, r in enumerate(conns[:50]):
            r.send(frame(v=1, id=2, op="session.open", args={"name": f"s{i}"}))
        for r in conns[:50]:
            reply = r.frame()
            assert reply is not None and reply["ok"], reply
        with Raw(daemon) as admin:
            names = {s["session"] for s in admin.ok("list")["sessions"]}
        assert {f"s{i}" for i in range(50)} <= names
    finally:
        for r in conns:
            r.close()
    assert_serves(daemon)
    no_tracebacks(daemon)


@pytest.mark.parametrize("daemon", ["max_connections = 5"], indirect=True, ids=["max_conn_5"])
def test_connection_limit(daemon: RunningDaemon) -> None:
    conns = [Raw(daemon) for _ in range(5)]
    try:
        for r in conns:
            r.ok("hello", version=1)
        with Raw(daemon) as extra:
            assert_error(extra.frame(), "busy")
            assert extra.closed()
        conns.pop().close()

        def admitted() -> bool:
            with Raw(daemon) as again:
                again.send(HELLO)
                reply = again.frame()
                return reply is not None and reply["ok"]

        wait_until(admitted, what="a freed connection slot")
    finally:
        for r in conns:
            r.close()
    wait_until(admitted, what="all slots to free")
    assert_serves(daemon)
    no_tracebacks(daemon)


# --------------------------------------------------------------------------- races


def test_call_end_before_begin_and_double_end(daemon: RunningDaemon) -> None:
    with Raw(daemon) as r:
        r.ok("hello", version=1)
        ghost = {"call": "c0123456789ab", "token": "0" * 32}
        assert_error(r.request("call.end", **ghost), "not_found", r.next_id)
        assert_error(r.request("call.attach", **ghost), "not_found", r.next_id)
        assert_error(r.request("call.claim", **ghost), "not_found", r.next_id)
        assert_error(r.request("call.status", call=ghost["call"]), "not_found", r.next_id)
        assert_error(r.request("session.close", session="nosuch"), "not_found", r.next_id)

        began = r.ok("call.begin", intent={"label": "x"})
        ids = {"call": began["call"], "token": began["token"]}
        assert r.ok("call.end", **ids, exit_status=3)["exit_status"] == 3
        for _ in range(2):
            reply = r.request("call.end", **ids)
            assert not reply["ok"] and reply["error"]["code"] in ("not_found", "conflict"), reply
        assert_error(r.request("call.attach", **ids), "not_found", r.next_id)
    assert daemon.tool_cgroups() == []
    assert_serves(daemon)


def test_concurrent_call_end_one_wins(daemon: RunningDaemon) -> None:
    with Client() as c:
        call = c.tool_call(memory="32M", label="sleep").begin()
        tool = call.popen(["sleep", "600"])
        wait_until(lambda: daemon.tool_cgroups() != [], what="the call cgroup")
        a, b = Raw(daemon), Raw(daemon)
        try:
            a.ok("hello", version=1)
            b.ok("hello", version=1)
            end = frame(v=1, id=9, op="call.end", args={"call": call.id, "token": call.token})
            a.send(end)
            b.send(end)
            replies = [a.frame(), b.frame()]
        finally:
            a.close()
            b.close()
        assert all(m is not None for m in replies), replies
        oks = [m for m in replies if m["ok"]]
        errs = [m["error"]["code"] for m in replies if not m["ok"]]
        assert len(oks) == 1 and errs[0] in ("conflict", "not_found"), replies
        assert tool.wait(timeout=WAIT_S) == -signal.SIGKILL  # ended calls leave nothing behind
        assert daemon.tool_cgroups() == []
        with pytest.raises(AgentcgError) as e:
            call.end()
        assert e.value.code == "not_found"
    assert_serves(daemon)
    no_tracebacks(daemon)


def test_session_close_kills_running_call(daemon: RunningDaemon) -> None:
    with Client() as c:
        c.open_session("victim")
        call = c.tool_call(session="victim", memory="32M", label="sleep").begin()
        tool = call.popen(["sleep", "600"])
        cg = Path(call.info["cgroup"])
        wait_until(lambda: str(tool.pid) in (cg / "cgroup.procs").read_text().split())
        with Raw(daemon) as r:
            assert r.ok("session.close", session="victim") == {
                "closed": "victim",
                "killed_calls": 1,
            }
            assert_error(r.request("session.status", session="victim"), "not_found", r.next_id)
            assert_error(r.request("call.status", call=call.id), "not_found", r.next_id)
        assert tool.wait(timeout=WAIT_S) == -signal.SIGKILL
        wait_until(lambda: any(e["event"] == "ended" for e in call.events), what="ended event")
        killed = [e for e in call.events if e["event"] == "killed"]
        ended = [e for e in call.events if e["event"] == "ended"]
        assert killed and killed[0]["data"]["reason"] == "session_closed", call.events
        assert ended[-1]["data"]["killed_reason"] == "session_closed", call.events
        assert not cg.exists() and not cg.parent.parent.exists()
        with pytest.raises(AgentcgError) as e:
            call.end(-9)
        assert e.value.code == "not_found"
        # The same agent carries on in a new session of the same name.
        c.open_session("victim")
        with c.tool_call(session="victim", label="true") as again:
            assert again.run(["true"]).returncode == 0
    assert daemon.tool_cgroups() == []
    assert_serves(daemon)
    no_tracebacks(daemon)


DYING_CLIENT = """
from agentcg.client import Client
with Client() as c:
    call = c.tool_call(memory="32M", label="sleep").begin()
    p = call.popen(["sleep", "600"])
    print(call.id, call.info["cgroup"], p.pid, flush=True)
    p.wait()
"""


def test_client_killed_mid_call_loses_its_tool(daemon: RunningDaemon) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), AGENTCG_SOCKET=str(daemon.socket))
    agent = subprocess.Popen(
        [sys.executable, "-c", DYING_CLIENT], stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    watchdog = threading.Timer(WAIT_S * 4, agent.kill)
    watchdog.start()
    try:
        assert agent.stdout is not None
        line = agent.stdout.readline().decode()
        assert line, "the agent did not start its call"
        call_id, cgroup, pid = line.split()
        cg = Path(cgroup)
        wait_until(lambda: pid in (cg / "cgroup.procs").read_text().split(), what="attach")
        agent.kill()  # SIGKILL: no goodbye, no call.end
        agent.wait()
    finally:
        watchdog.cancel()
    wait_until(lambda: not cg.exists(), timeout=WAIT_S, what="the call cgroup to go")
    wait_until(lambda: pid_gone(int(pid)), timeout=WAIT_S, what="the tool to die")
    with Raw(daemon) as r:
        assert_error(r.request("call.status", call=call_id), "not_found", r.next_id)
        # The agent's session is state, not a connection: it is still there.
        sess = r.ok("session.status", session="uid-0")
        assert sess["calls"] == []
    assert daemon.tool_cgroups() == []
    assert_serves(daemon)
    no_tracebacks(daemon)


def _begin_and_hold(d: RunningDaemon) -> Callable[[Chan], None]:
    """Forked call owner: begins a call, lets its own child attach, then waits."""

    def owner(chan: Chan) -> None:
        with Raw(d) as r:
            r.ok("hello", version=1)
            began = r.ok("call.begin", intent={"label": "owned"})
            # A real descendant of the owner attaches and keeps the call running.
            kid = _tool_in_call(d, began)
            chan.send(began)
            chan.recv()  # hold the connection (and so the call) until told to end
            out = r.ok("call.end", call=began["call"], token=began["token"], exit_status=0)
            os.waitpid(kid, 0)
            chan.send(out)

    return owner


def test_attach_needs_token_and_descent(daemon: RunningDaemon) -> None:
    owner = Forked(_begin_and_hold(daemon))
    try:
        began = owner.recv()
        ids = {"call": began["call"], "token": began["token"]}
        wrong = {"call": began["call"], "token": "f" * 32}

        def attacker(chan: Chan) -> None:
            # A sibling of the owner, same uid: not its descendant.
            chan.send(
                {
                    "wrong_token": raw_code(daemon, "call.attach", **wrong),
                    "right_token": raw_code(daemon, "call.attach", **ids),
                    "claim_wrong_token": raw_code(daemon, "call.claim", **wrong),
                    "end_wrong_token": raw_code(daemon, "call.end", **wrong),
                    "cgroup": Path("/proc/self/cgroup").read_text().strip(),
                }
            )

        sib = Forked(attacker)
        got = sib.recv()
        assert sib.wait() == 0
        assert got["wrong_token"] == "unauthorized"
        assert got["right_token"] == "unauthorized"
        assert got["claim_wrong_token"] == "unauthorized"
        assert got["end_wrong_token"] == "unauthorized"
        assert began["call"] not in got["cgroup"]
        procs = Path(began["cgroup"], "cgroup.procs").read_text().split()
        assert len(procs) == 1, procs  # only the owner's own child is in the call
        owner.send("end")
        out = owner.recv()
        assert out["exit_status"] == 0 and out["killed_reason"] is None
    finally:
        owner.wait()
    assert daemon.tool_cgroups() == []
    assert_serves(daemon)


def _held_child(
    become: tuple[int, int, int] | None = None, grandchild: bool = False
) -> tuple[int, int]:
    """Fork a process that waits before its exec (as the SDK's gated tool does); with
    `become`, it first sets its (real, effective, saved) uids; with `grandchild`, the
    waiting process is the child's child. (its pid, the fd that releases it)."""
    held, release = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(release)  # else its own copy would keep it from ever seeing EOF
            os.close(report_r)
            if grandchild and os.fork():
                os._exit(0)  # the grandchild is reparented, never our child
            if become:
                os.setresuid(*become)
            os.write(report_w, str(os.getpid()).encode())
            if os.read(held, 1) == b"x":  # released; EOF means give up
                os.execvp("sleep", ["sleep", "600"])
        finally:
            os._exit(126)
    os.close(held)
    os.close(report_w)
    waiting = int(os.read(report_r, 32))
    os.close(report_r)
    if grandchild:
        os.waitpid(pid, 0)
    return waiting, release


def test_attach_by_pid_takes_only_the_askers_own_waiting_child(daemon: RunningDaemon) -> None:
    # call.attach {pid}: the asker names the pid, the kernel says whose child it is; the
    # child then passes every check it would face attaching itself.
    nobody = 65534
    with Raw(daemon) as r:
        r.ok("hello", version=1)
        began = r.ok("call.begin", intent={"label": "by-pid"})
        ids = {"call": began["call"], "token": began["token"]}
        cases = {
            "own child": _held_child(),
            "grandchild": _held_child(grandchild=True),
            "switching uid": _held_child(become=(0, nobody, 0)),
            "other uid": _held_child(become=(nobody, nobody, nobody)),
        }
        gone_pid, gone_release = _held_child()
        os.close(gone_release)  # it exits 126 at once
        os.waitpid(gone_pid, 0)
        codes = {name: r.request("call.attach", **ids, pid=pid) for name, (pid, _) in cases.items()}
        codes["wrong token"] = r.request(
            "call.attach", call=began["call"], token="f" * 32, pid=cases["own child"][0]
        )
        codes["init"] = r.request("call.attach", **ids, pid=1)
        codes["gone"] = r.request("call.attach", **ids, pid=gone_pid)
        try:
            assert codes.pop("own child")["ok"] is True
            for name, reply in codes.items():
                assert not reply["ok"] and reply["error"]["code"] == "unauthorized", (name, reply)
            assert "not a child of" in codes["grandchild"]["error"]["message"]
            assert "switching" in codes["switching uid"]["error"]["message"]
            procs = Path(began["cgroup"], "cgroup.procs").read_text().split()
            assert procs == [str(cases["own child"][0])]  # only the asker's own child moved
            os.write(cases["own child"][1], b"x")  # released: it execs inside the call
            wait_until(
                lambda: b"sleep" in Path(f"/proc/{cases['own child'][0]}/cmdline").read_bytes(),
                what="the tool to exec",
            )
            assert began["call"] in Path(f"/proc/{cases['own child'][0]}/cgroup").read_text()
            out = r.ok("call.end", **ids, exit_status=0)
            assert out["killed_reason"] is None
        finally:
            for name, (pid, release) in cases.items():
                os.close(release)  # a child still held exits 126
                if name != "grandchild":  # not ours to kill or reap
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)  # the one released sleeps
                    os.waitpid(pid, 0)
    assert daemon.tool_cgroups() == []
    assert_serves(daemon)


def test_begin_with_a_pid_begins_and_attaches_in_one_request(daemon: RunningDaemon) -> None:
    # call.begin {pid}: what the SDK sends for a call's first process. The attach is
    # checked as call.attach's; refused, the call has begun all the same and says why.
    with Raw(daemon) as r:
        r.ok("hello", version=1)
        own, own_release = _held_child()
        other, other_release = _held_child(grandchild=True)
        try:
            both = r.request("call.begin", intent={"label": "x"}, pid=own, wait_s=1)
            assert not both["ok"] and both["error"]["code"] == "invalid_value", both
            assert daemon.tool_cgroups() == []  # refused before anything began
            began = r.ok("call.begin", intent={"label": "begin-pid"}, pid=own)
            assert began["attached"] is True and "attach_error" not in began
            assert Path(began["cgroup"], "cgroup.procs").read_text().split() == [str(own)]
            refused = r.ok("call.begin", intent={"label": "begin-pid"}, pid=other)
            error = refused["attach_error"]
            assert error["code"] == "unauthorized" and "not a child of" in error["message"]
            assert "attached" not in refused
            assert Path(refused["cgroup"], "cgroup.procs").read_text().split() == []
            out = r.ok("call.end", call=refused["call"], token=refused["token"], exit_status=126)
            assert out["exit_status"] == 126
            os.write(own_release, b"x")  # released: it execs inside the call
            wait_until(
                lambda: b"sleep" in Path(f"/proc/{own}/cmdline").read_bytes(),
                what="the tool to exec",
            )
            assert began["call"] in Path(f"/proc/{own}/cgroup").read_text()
            out = r.ok("call.end", call=began["call"], token=began["token"], exit_status=0)
            assert out["killed_reason"] is None
        finally:
            os.close(own_release)
            os.close(other_release)  # the grandchild, still held, exits 126
            with contextlib.suppress(ProcessLookupError):
                os.kill(own, signal.SIGKILL)
            os.waitpid(own, 0)
    assert daemon.tool_cgroups() == []
    assert_serves(daemon)


def test_attach_by_pid_refuses_a_child_with_other_ids_than_its_agent(daemon: RunningDaemon) -> None:
    # A non-admin agent's root child (as a setuid helper it started would be) is not
    # the agent's to move. Here the asker forks it as root, then becomes nobody; its
    # child forked as nobody afterwards is its own, and the control.
    report_r, report_w = os.pipe()
    asker = os.fork()
    if asker == 0:
        result: dict[str, Any] = {}
        try:
            os.close(report_r)
            root_child, root_release = _held_child()
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            own_child, own_release = _held_child()
            with Raw(daemon) as r:
                result["hello"] = r.ok("hello", version=1)
                began = r.ok("call.begin", intent={"label": "setuid-helper"})
                ids = {"call": began["call"], "token": began["token"]}
                result["root"] = r.request("call.attach", **ids, pid=root_child)
                result["own"] = r.request("call.attach", **ids, pid=own_child)
                procs = Path(began["cgroup"], "cgroup.procs").read_text().split()
                result["procs"] = [int(p) for p in procs]
                result["pids"] = {"root": root_child, "own": own_child}
                result["end"] = r.request("call.end", **ids, exit_status=0)
            for release in (root_release, own_release):
                os.close(release)  # a child still held exits 126
            for pid in (root_child, own_child):
                os.waitpid(pid, 0)
        except BaseException as e:
            result["error"] = repr(e)
        finally:
            os.write(report_w, json.dumps(result).encode())
            os._exit(0)
    os.close(report_w)
    with os.fdopen(report_r, "rb") as f:
        result = json.loads(f.read())
    os.waitpid(asker, 0)
    assert "error" not in result, result
    assert result["hello"]["peer"]["uid"] == NOBODY
    root, own = result["root"], result["own"]
    assert not root["ok"] and root["error"]["code"] == "unauthorized", root
    assert "runs as uid 0" in root["error"]["message"]
    assert own["ok"] is True, own
    assert result["procs"] == [result["pids"]["own"]]  # the root child never moved
    assert result["end"]["ok"] is True
    assert daemon.tool_cgroups() == []
    assert_serves(daemon)


# --------------------------------------------------------------------------- path injection

BAD_NAMES = [
    "../x",
    "../../x",
    "../../../x",
    "..",
    ".",
    "a/b",
    "/abs",
    ".hidden",
    "-dash",
    "_under",
    "UPPER",
    "x" * 64,
    "a" * 4096,
    "sessión",
    "\uff58",  # fullwidth x
    "caf\u0065\u0301",
    "a\nb",
    "a\x00b",
    " a",
    "a ",
    "",
]


def _cgroup_tree() -> set[Path]:
    mount = find_cgroup2_mount()
    assert mount is not None
    return {p for p in mount.rglob("*") if p.is_dir()}


def test_path_injection_in_names_is_invalid_value(daemon: RunningDaemon) -> None:
    before = _cgroup_tree()
    failures = []
    with Raw(daemon) as r:
        r.ok("hello", version=1)
        r.ok("session.open", name="real")
        for name in BAD_NAMES:
            attempts = {
                "session.open": {"name": name},
                "session.status": {"session": name},
                "session.close": {"session": name},
                "call.begin session": {"session": name, "intent": {}},
                "call.begin label": {"session": "real", "intent": {"label": name}},
            }
            for what, args in attempts.items():
                op = what.split()[0]
                reply = r.request(op, **args)
                if reply["ok"] or reply["error"]["code"] != "invalid_value":
                    failures.append(f"{what} {name!r}: {reply}")
    assert not failures, "\n".join(failures)
    after = _cgroup_tree()
    assert after - before == {daemon.root.path / "sessions/real"} | {
        daemon.root.path / "sessions/real" / d for d in ("agent", "tools")
    }, after - before
    assert before - after == set()
    assert_serves(daemon)


def test_interface_file_names_are_refused(daemon: RunningDaemon) -> None:
    # These match the name pattern but would shadow cgroup interface files.
    before = _cgroup_tree()
    with Raw(daemon) as r:
        r.ok("hello", version=1)
        for name in ("cgroup.procs", "cgroup.kill", "memory.max", "pids.max", "cpu.weight"):
            assert_error(r.request("session.open", name=name), "invalid_value", r.next_id)
            for op in ("session.status", "session.close"):
                reply = r.request(op, session=name)
                assert not reply["ok"], reply
                assert reply["error"]["code"] in ("invalid_value", "not_found"), reply
            began = r.request("call.begin", session=name, intent={})
            assert began["error"]["code"] in ("invalid_value", "not_found"), began
    assert _cgroup_tree() == before
    for f in ("cgroup.procs", "memory.max"):
        assert daemon.root.path.joinpath("sessions", f).is_file()
    assert_serves(daemon)
    no_tracebacks(daemon)


# --------------------------------------------------------------------------- authorization

OTHER_UID_AGENT = """
import json, subprocess, sys
from agentcg.client import Client
from agentcg.core.errors import AgentcgError

session, call, token = sys.argv[1:4]


def code(c, op, **args):
    try:
        c.request(op, **args)
        return "ok"
    except AgentcgError as e:
        return e.code


out = {}
with Client() as c:
    out["peer"] = c.server["peer"]
    out["session.status"] = code(c, "session.status", session=session)
    out["session.close"] = code(c, "session.close", session=session)
    out["session.open same name"] = code(c, "session.open", name=session)
    out["call.begin in it"] = code(c, "call.begin", session=session, intent={})
    out["call.status"] = code(c, "call.status", call=call)
    out["call.end"] = code(c, "call.end", call=call, token=token, exit_status=0)
    out["call.attach"] = code(c, "call.attach", call=call, token=token)
    out["call.claim"] = code(c, "call.claim", call=call, token=token)
    out["list"] = code(c, "list")
    own = c.open_session()
    with c.tool_call(session=own, memory="32M", label="id") as tc:
        p = tc.run(["sh", "-c", "id -u; cat /proc/self/cgroup"], stdout=subprocess.PIPE, text=True)
    out["own"] = {"session": own, "rc": p.returncode, "stdout": p.stdout, "outcome": tc.outcome}
    out["own status"] = c.request("session.status", session=own)["session"]
print(json.dumps(out))
"""


def _reachable_by_others(path: Path) -> bool:
    """Every directory above `path` searchable, and `path` readable and executable, by others."""
    dirs_ok = all(os.stat(d).st_mode & 0o001 for d in path.parents)
    return dirs_ok and os.stat(path).st_mode & 0o005 == 0o005


@contextlib.contextmanager
def package_copy_for_others() -> Iterator[Path]:
    """A world-readable copy of the agentcg package: the checkout (and its venv) may live
    in a private directory that another uid cannot enter, e.g. a clone in root's home."""
    with tempfile.TemporaryDirectory(prefix="agentcg-other-uid-") as tmp:
        top = Path(tmp)
        shutil.copytree(
            ROOT / "agentcg", top / "agentcg", ignore=shutil.ignore_patterns("__pycache__")
        )
        for d, _, files in os.walk(top):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        yield top


def test_other_uid_cannot_touch_my_session_or_call(daemon: RunningDaemon) -> None:
    # The SDK needs only the standard library: the base interpreter, not the venv's.
    python = Path(sys._base_executable).resolve()
    assert _reachable_by_others(python), f"{python} cannot be run by uid {NOBODY}"
    assert os.stat(daemon.socket).st_mode & 0o777 == 0o666

    with Client() as c, package_copy_for_others() as pkg:
        c.open_session("mine")
        call = c.tool_call(session="mine", memory="32M", label="sleep").begin()
        tool = call.popen(["sleep", "600"])
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(pkg),
            "PYTHONDONTWRITEBYTECODE": "1",
            "AGENTCG_SOCKET": str(daemon.socket),
            "HOME": "/",
        }
        done = subprocess.run(
            [str(python), "-c", OTHER_UID_AGENT, "mine", call.id, call.token],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=WAIT_S * 6,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["peer"]["uid"] == NOBODY and out["peer"]["gid"] == NOBODY
        for op in (
            "session.status",
            "session.close",
            "session.open same name",
            "call.begin in it",
            "call.status",
            "call.end",
            "call.attach",
            "call.claim",
            "list",
        ):
            assert out[op] == "unauthorized", (op, out)
        own = out["own"]
        assert own["session"] == f"uid-{NOBODY}" and out["own status"] == own["session"]
        assert own["rc"] == 0 and own["outcome"]["exit_status"] == 0
        uid, cgline = own["stdout"].split("\n", 1)
        assert uid == str(NOBODY)
        assert f"/sessions/uid-{NOBODY}/tools/c" in cgline

        # The victim's call was not touched; its owner still controls it.
        assert tool.poll() is None
        assert c.request("call.status", call=call.id)["state"] == "running"
        # Root is an admin: it sees and may inspect everyone's sessions.
        with Raw(daemon) as admin:
            sessions = {s["session"]: s for s in admin.ok("list")["sessions"]}
            assert sessions["mine"]["owner_uid"] == 0
            assert sessions[f"uid-{NOBODY}"]["owner_uid"] == NOBODY
            assert admin.ok("session.status", session=f"uid-{NOBODY}")["calls"] == []
        tool.kill()
        tool.wait()
        assert call.end(-9)["signal"] == 9
    assert daemon.tool_cgroups() == []
    assert_serves(daemon)
    no_tracebacks(daemon)


def test_forked_other_uid_peer_is_refused(daemon: RunningDaemon) -> None:
    """Same checks at the wire level, from a forked child that drops to uid 65534."""
    with Raw(daemon) as r:
        r.ok("hello", version=1)
        r.ok("session.open", name="root-owned")
        began = r.ok("call.begin", session="root-owned", intent={"label": "x"})
        ids = {"call": began["call"], "token": began["token"]}

        def intruder(chan: Chan) -> None:
            chan.send(
                {
                    "uid": os.getuid(),
                    "status": raw_code(daemon, "session.status", session="root-owned"),
                    "close": raw_code(daemon, "session.close", session="root-owned"),
                    "end": raw_code(daemon, "call.end", **ids),
                    "attach": raw_code(daemon, "call.attach", **ids),
                    "list": raw_code(daemon, "list"),
                    "own": raw_code(daemon, "session.open", name="nobody-own"),
                    "own status": raw_code(daemon, "session.status", session="nobody-own"),
                    "own close": raw_code(daemon, "session.close", session="nobody-own"),
                }
            )

        child = Forked(intruder, uid=NOBODY)
        got = child.recv()
        assert child.wait() == 0
        assert got["uid"] == NOBODY
        for k in ("status", "close", "end", "attach", "list"):
            assert got[k] == "unauthorized", (k, got)
        assert got["own"] == got["own status"] == got["own close"] == "ok", got
        assert r.ok("call.status", call=began["call"])["state"] == "pending"
        assert r.ok("call.end", **ids)["killed_reason"] is None
        listed = {s["session"] for s in r.ok("list")["sessions"]}
        assert "root-owned" in listed and "nobody-own" not in listed, listed
    assert_serves(daemon)


def _tool_in_call(d: RunningDaemon, began: dict[str, Any]) -> int:
    """Fork a child of this (owner) process that attaches to the call and sleeps."""
    pid = os.fork()
    if pid == 0:
        try:
            code = raw_code(d, "call.attach", call=began["call"], token=began["token"])
            if code == "ok":
                os.execvp("sleep", ["sleep", "600"])
        finally:
            os._exit(126)
    cg = Path(began["cgroup"])
    wait_until(lambda: str(pid) in (cg / "cgroup.procs").read_text().split(), what="attach")
    return pid


def test_owner_vanishes_while_session_close_drains(daemon: RunningDaemon) -> None:
    """The owner disconnects while session.close is still killing one of its calls:
    every call of that owner must still be killed and removed, none left behind."""
    owner = Raw(daemon)
    owner.ok("hello", version=1)
    owner.ok("session.open", name="doomed")
    owner.ok("session.open", name="other")
    calls = [owner.ok("call.begin", session="doomed", intent={"label": "d"})]
    calls += [owner.ok("call.begin", session="other", intent={"label": "o"}) for _ in range(4)]
    pids = [_tool_in_call(daemon, began) for began in calls]
    try:
        with Raw(daemon) as admin:
            admin.ok("hello", version=1)
            admin.send(frame(v=1, id=5, op="session.close", args={"session": "doomed"}))
            owner.close()  # lands while the daemon waits for the doomed tool to die
            reply = admin.frame()
            assert reply is not None and reply["ok"], reply
            assert reply["result"]["killed_calls"] == 1
            for began in calls:
                wait_until(
                    lambda b=began: not Path(b["cgroup"]).exists(), what=f"{began['call']} removed"
                )
            for began in calls:
                reply = admin.request("call.status", call=began["call"])
                assert_error(reply, "not_found", admin.next_id)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert daemon.tool_cgroups() == []
    assert_serves(daemon)
    no_tracebacks(daemon)


@pytest.mark.parametrize(
    "daemon",
    ["max_connections_per_peer = 3\n[session]\nmax_per_owner = 2"],
    indirect=True,
    ids=["per_peer_caps"],
)
def test_one_agent_cannot_starve_the_others(daemon: RunningDaemon) -> None:
    """Per-agent caps: connections and sessions of one (uid, container) are bounded,
    while other agents and the admin are still served."""

    def greedy(chan: Chan) -> None:
        held = [Raw(daemon) for _ in range(3)]
        for r in held:
            r.ok("hello", version=1)
        with Raw(daemon) as extra:
            fourth = extra.frame()
        sessions = []
        for i in range(3):
            reply = held[0].request("session.open", name=f"g{i}")
            sessions.append("ok" if reply and reply["ok"] else reply and reply["error"]["code"])
        chan.send({"fourth": fourth, "sessions": sessions})
        chan.recv()  # hold the connections until the parent has checked the others
        for r in held:
            r.close()

    child = Forked(greedy, uid=NOBODY)
    got = child.recv()
    assert_error(got["fourth"], "busy")
    assert got["sessions"] == ["ok", "ok", "limit_exceeded"], got
    # Another agent (here: root, the admin) is served meanwhile.
    assert_serves(daemon)
    child.send("done")
    assert child.wait() == 0

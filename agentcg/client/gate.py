"""The gate a forked tool process waits at between fork and exec while the daemon
places it in its call's cgroup (agentcg.client.sdk's popen()/run() and `agentcg run`).
On the `agentcg run` path: C-core modules only, as in agentcg.client.connection."""

from __future__ import annotations

import _socket
import _thread
import os
from select import POLLIN, poll

from agentcg.client import wire
from agentcg.client.connection import PROTOCOL_VERSION
from agentcg.core.errors import AgentcgError

# Annotations only (never evaluated): importing typing would slow `agentcg run`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from agentcg.client.sdk import ToolCall

_MAX_VERDICT = 4096  # one pipe write of at most PIPE_BUF arrives whole


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

    Combined (popen/run, `agentcg run`), a call that has not begun begins with the
    child's frame: `call.begin {..., pid: <its own pid>}` creates the call and attaches
    the child in one round trip; the reader thread records the call, and a refused
    begin reaches the child as b"2" (it exits 126 quietly) and the parent as
    `refusal`. Otherwise the call begins first, on its own request.

    The child connects on its own and attaches itself instead, the daemon taking its
    pid from SO_PEERCRED, when another request is pending on the parent's connection
    (the daemon answers a connection's requests in order, and one may wait long, e.g.
    a call.begin for a slot), and when the parent is in a pid namespace of its own (a
    container): it does not know its child's pid as the daemon sees it. Between fork
    and exec the child only writes, waits (poll, up to the client's timeout) and
    reads. Every socket is close-on-exec: the tool never holds one.
    """

    def __init__(self, call: ToolCall, combined: bool = False) -> None:
        self.call = call
        self.client = call.client
        self.refusal: AgentcgError | None = None  # a combined begin's error
        self._combined = combined and not call.wait_s  # a begin that waits must wait alone
        self._beginning = False  # the child's frame is a call.begin with its pid
        self._timeout_ms = int(self.client.timeout * 1000)
        self._rid = next(self.client._ids)
        self._gen = -1
        self._head = b""
        self._frame = b""
        self.failure = b""
        self._sock: _socket.socket | None = None
        self._lent = False
        self._holds_begin_lock = False  # holds call._begin_lock until __exit__
        self._lock = _thread.allocate_lock()  # put() against closing the pipe
        self._closed = False
        self._go_r, self._go_w = os.pipe()
        self._poll = poll()
        self._poll.register(self._go_r, POLLIN)

    def __enter__(self) -> Gate:
        call, client = self.call, self.client
        if not call._id:
            call._begin_lock.acquire()  # another thread's gate may be beginning it
            self._holds_begin_lock = True
        try:
            # By pid the frame ends '..., "pid": <pid>}}\n'; the child adds its pid.
            by_pid = (client.server.get("peer") or {}).get("pid") == os.getpid()
            if not call._id and not (self._combined and by_pid):
                call.begin()
            if by_pid:
                self._sock = client._lend(self._rid, self)
                self._lent = self._sock is not None
                if self._lent:
                    self._gen = client._waiting[self._rid][1]
                elif not call._id:
                    call.begin()  # another request is pending: begin behind it
            self._beginning = not call._id
            if self._beginning:
                op, args, what = "call.begin", call.begin_args(), "call.begin"
            else:
                op, what = "call.attach", f"call.attach {call._id}"
                args = {"call": call._id, "token": call._token}
            self.failure = (
                f"agentcg: could not place the tool in its cgroup ({what} via "
                f"{client.path}); not running it\n"
            ).encode(errors="replace")
            frame = wire.dumps({"v": PROTOCOL_VERSION, "id": self._rid, "op": op, "args": args})
            self._frame = frame.encode() + b"\n"
            if self._lent:
                self._head = (frame[:-2] + ', "pid": ').encode()
            else:
                self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                self._sock.settimeout(self._timeout_ms / 1000)
        except BaseException:
            if self._lent:
                self.client._unlend(self._rid)
            self._close()
            self._unlock()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lent:
            self.client._unlend(self._rid)
        self._close()
        self._unlock()
        if self._beginning and not self.call._id and self.refusal is None:
            self.refusal = AgentcgError(
                "unavailable",
                f"no answer to call.begin from the daemon at {self.client.path}; "
                "nothing ran: retry",
            )

    def _unlock(self) -> None:
        if self._holds_begin_lock:
            self._holds_begin_lock = False
            self.call._begin_lock.release()

    def put(self, msg: dict[str, Any] | None) -> None:
        """From the parent's reader thread: the daemon's answer, or None when it will
        never come. Only the first counts, and none once the gate is closed (but the
        call a combined begin began is the caller's even then)."""
        refusal = None
        if msg is not None and msg.get("ok"):
            error = None
            if self._beginning:
                self.call._began(msg["result"], self._gen)
                error = msg["result"].get("attach_error")
        else:
            error = (msg or {}).get("error") or {}
            if self._beginning and msg is not None:
                refusal = AgentcgError.from_dict(error)
        if error is None:
            verdict = b"1"
        elif refusal is not None:
            verdict = b"2"  # not begun: the parent raises the refusal, the child just exits
        else:
            reason = error.get("message", "the daemon closed the connection")
            code = error.get("code", "unavailable")
            verdict = f"0{code}: {reason}\n".encode(errors="replace")[:_MAX_VERDICT]
        with self._lock:
            if self._closed:
                return
            self._closed = True  # answered: a later put() writes nothing
            self.refusal = refusal
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
            if verdict != b"2":
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

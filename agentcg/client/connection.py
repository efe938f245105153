"""One connection to the agentcg daemon: NDJSON requests and their answers, pushed
events, and surviving a daemon restart (reconnect, then claim the running calls again).

agentcg.client.sdk builds the agent's API (sessions, tool calls) on it. Like the SDK,
this is on the `agentcg run` path: standard library modules it needs anyway, no more,
and their C cores where the Python layer costs start-up time for nothing used here:
`_socket` (the socket module's enums and `selectors`: ~2 ms), `_queue`'s SimpleQueue
(queue.py: ~1 ms), agentcg.client.wire (json: ~6 ms with `re`).
"""

from __future__ import annotations

import _socket
import itertools
import os
import threading
import time
from _queue import Empty, SimpleQueue
from collections.abc import Callable

from agentcg.client import wire
from agentcg.core.errors import AgentcgError

# Annotations only (never evaluated): importing typing would slow `agentcg run`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    from agentcg.client.sdk import ToolCall

    class Waiter(Protocol):
        """Where the reader puts a request's answer (None: it will never come)."""

        def put(self, msg: dict[str, Any] | None) -> None: ...


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


def _shutdown(sock: _socket.socket, how: int) -> None:
    """shutdown(2) a socket whose peer may be gone already. Not contextlib.suppress:
    importing contextlib is ~1 ms of `agentcg run`'s start-up."""
    try:  # noqa: SIM105
        sock.shutdown(how)
    except OSError:
        pass


class Connection:
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
        self._waiting: dict[int, tuple[Waiter, int]] = {}
        # Requests given up on (timed out) whose answer has not come yet: still pending
        # in the daemon, which answers a connection's requests in order.
        self._abandoned: set[int] = set()
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

    def _start(self) -> _socket.socket:
        """Connect, make the socket current (a new generation), then start its reader."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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
            self._abandoned.clear()  # the old connection's: never answered now
        self._reader_thread = threading.Thread(target=self._reader, args=(sock, gen), daemon=True)
        self._reader_thread.start()
        return sock

    def _reader(self, sock: _socket.socket, gen: int) -> None:
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
                    msg = wire.loads(line)
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
        # Wake requests whose answer will never come: first those already waiting (a
        # forked child sending on this socket holds the send lock until it is told),
        # then, once the socket is closed, any that registered meanwhile.
        self._wake(gen)
        with self._send_lock:  # never close under a concurrent sendall
            sock.close()
        self._wake(gen)
        if reconnect:
            self._reconnect()

    def _wake(self, gen: int) -> None:
        with self._lock:
            waiting = [q for q, g in self._waiting.values() if g == gen]
        for q in waiting:
            q.put(None)

    def _dispatch(self, msg: dict[str, Any], sock: _socket.socket, gen: int) -> None:
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
                _shutdown(sock, _socket.SHUT_WR)
            else:
                entry = self._waiting.pop(rid, None)  # type: ignore[arg-type]
                targets = [entry[0]] if entry is not None else []
                if entry is None:
                    self._abandoned.discard(rid)  # type: ignore[arg-type]
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
                _shutdown(sock, _socket.SHUT_RDWR)
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
        q: SimpleQueue[dict[str, Any] | None] = SimpleQueue()
        frame = wire.dumps({"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args}).encode()
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
            except Empty:
                with self._lock:
                    # Still registered: not answered. Else the reader took the answer
                    # just now and is putting it into q.
                    given_up = self._waiting.pop(rid, None) is not None
                    if given_up and gen == self._gen:
                        self._abandoned.add(rid)
                if given_up:
                    raise AgentcgError(
                        "timeout",
                        f"no answer to {op} within {self.timeout:.0f}s; is the daemon overloaded?",
                    ) from None
                msg = q.get()
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

    def _lend(self, rid: int, waiter: Waiter) -> _socket.socket | None:
        """The socket, for a forked child to send request `rid` on between fork and
        exec; its answer goes to `waiter`. The send lock is held until _unlend(), so
        the child's frame never interleaves with another thread's. None (and no lock
        held) while another request is pending on it, even one given up on: the
        daemon answers a connection's requests in order, so the child's would wait
        behind that one (e.g. a call.begin waiting for a slot)."""
        while True:
            if not self._connected.wait(RECONNECT_WINDOW_S):
                raise AgentcgError(
                    "unavailable",
                    f"the agentcg daemon at {self.path} did not come back; "
                    "check `systemctl status agentcg`",
                )
            self._send_lock.acquire()
            try:
                with self._lock:
                    # A reader tearing this connection down clears _connected before it
                    # wakes the waiters: registered now, the waiter is woken; else retry.
                    if self._connected.is_set() and not self._closed:
                        if self._waiting or self._abandoned:
                            self._send_lock.release()
                            return None
                        self._waiting[rid] = (waiter, self._gen)
                        return self._sock
            except BaseException:  # e.g. KeyboardInterrupt: never keep the lock
                self._send_lock.release()
                raise
            self._send_lock.release()
            if self._closed:
                raise AgentcgError("unavailable", "the client is closed")

    def _unlend(self, rid: int) -> None:
        with self._lock:
            self._waiting.pop(rid, None)
        self._send_lock.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sock = self._sock
        # shutdown wakes the reader; it closes the socket under the send lock.
        _shutdown(sock, _socket.SHUT_RDWR)

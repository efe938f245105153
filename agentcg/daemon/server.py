"""The Unix socket front end: framing, limits and peer identity for every connection.

Each connection is read one frame at a time: the first byte may wait as long as
the connection is legitimately idle, the rest of the frame must arrive within
frame_timeout_s (slowloris), frames over max_frame close the connection, and a
token bucket caps requests per second. Whatever a client sends, it gets a
structured error and the daemon keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import time
from pathlib import Path
from typing import Any

from agentcg.core import protocol
from agentcg.core.caps import agent_connections
from agentcg.core.errors import AgentcgError
from agentcg.daemon.app import Daemon
from agentcg.daemon.listen import bind_socket
from agentcg.daemon.registry import Connection
from agentcg.kernel.peer import PeerGone, PeerHandle

log = logging.getLogger("agentcg.daemon.server")

MAX_PENDING_WRITE = 1 << 20  # a client that stops reading its events is dropped


class Server:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.cfg = daemon.cfg.daemon
        self.active = 0
        self.agents = 0  # connections of non-admins: they may not take the admins' share
        self.per_peer = daemon.reg.peers  # (uid, home) -> open connections
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = Path(self.cfg.socket)
        try:
            gid = grp.getgrnam(self.cfg.socket_group).gr_gid if self.cfg.socket_group else -1
        except KeyError:
            raise AgentcgError(
                "invalid_value", f"daemon.socket_group {self.cfg.socket_group!r} does not exist"
            ) from None
        sock = bind_socket(path, gid, self.cfg.socket_mode)
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=self.cfg.max_frame
        )
        log.info("listening on %s", path)

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            handle = PeerHandle(sock)
        except (OSError, PeerGone):
            writer.close()
            return
        try:
            await self._serve_peer(handle, reader, writer)
        finally:
            handle.close()

    async def _serve_peer(
        self, handle: PeerHandle, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            peer = handle.current()
        except PeerGone:
            writer.close()
            return
        key = (peer.uid, self.daemon.reg.locate(peer).home)
        admin = self.daemon.is_admin(peer)
        refusal = None
        if self.active >= self.cfg.max_connections:
            refusal = "the daemon is at max_connections; retry shortly"
        elif not admin and self.agents >= agent_connections(self.daemon.cfg):
            refusal = (
                "the daemon is at max_connections for agents (daemon.admin_connections are "
                "kept for admins); retry shortly"
            )
        elif self.per_peer.get(key, 0) >= self.cfg.max_connections_per_peer and not admin:
            refusal = (
                f"you already hold {self.cfg.max_connections_per_peer} connections "
                "(max_connections_per_peer); close some or reuse one"
            )
        if refusal:
            writer.write(protocol.encode(protocol.err(None, AgentcgError("busy", refusal))))
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        self.active += 1
        self.agents += not admin
        self.daemon.reg.stats.clients = self.active
        self.per_peer[key] = self.per_peer.get(key, 0) + 1

        out = _Outbox(writer, peer.pid)
        conn = Connection(peer, out.push)
        try:
            await self._loop(conn, handle, reader, out)
        except (ConnectionError, OSError):
            pass  # the peer vanished mid-reply; its calls are cleaned up below
        finally:
            self.active -= 1
            self.agents -= not admin
            self.daemon.reg.stats.clients = self.active
            self.per_peer[key] -= 1
            if not self.per_peer[key]:
                del self.per_peer[key]
            try:
                await self.daemon.connection_lost(conn)
            except Exception:  # the socket must still be closed, and the bug seen
                log.exception("cleaning up after pid %d failed", peer.pid)
            out.flush()  # the clean-up's events, before the close
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    async def _loop(
        self,
        conn: Connection,
        handle: PeerHandle,
        reader: asyncio.StreamReader,
        out: _Outbox,
    ) -> None:
        tokens = float(self.cfg.max_requests_per_second)
        last = time.monotonic()
        first = True
        while True:
            line = await self._read_frame(conn, reader, out)
            if line is None:
                return
            now = time.monotonic()
            tokens = min(
                float(self.cfg.max_requests_per_second),
                tokens + (now - last) * self.cfg.max_requests_per_second,
            )
            last = now
            rid: int | str | None = None
            op = "invalid"  # the op label of a frame that does not parse, in the stats
            # Every frame costs a token, so a flood of garbage is throttled too.
            allowed = tokens >= 1
            tokens -= 1 if allowed else 0
            try:
                req = protocol.parse_request(line, self.cfg.max_frame, require_version=first)
                rid, op = req.id, req.op
                if not allowed:
                    raise AgentcgError("busy", "too many requests on this connection; slow down")
                try:
                    conn.peer = handle.current()
                except PeerGone as e:
                    raise AgentcgError(
                        "unauthorized", f"{e}; requests must come from the process that connected"
                    ) from None
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "pid %d uid %d: %s %s",
                        conn.peer.pid,
                        conn.peer.uid,
                        req.op,
                        {k: v for k, v in req.args.items() if k != "token"},
                    )
                result = await self.daemon.handle(conn, req)
                reply = protocol.ok(req.id, result)
                first = False
            except AgentcgError as e:
                reply = protocol.err(rid if rid is not None else e.request_id, e)
            except Exception as e:  # a bug must cost one request, not the daemon
                log.exception("internal error")
                reply = protocol.err(
                    rid,
                    AgentcgError(
                        "internal", f"internal error ({type(e).__name__}); see the daemon log"
                    ),
                )
            self.daemon.reg.stats.request(op, None if reply["ok"] else reply["error"]["code"])
            out.flush(protocol.encode(reply))  # after the events this request pushed
            await out.writer.drain()

    async def _read_frame(
        self, conn: Connection, reader: asyncio.StreamReader, out: _Outbox
    ) -> bytes | None:
        # A connection that owns live calls may wait as long as its tools run.
        idle = None if conn.calls else self.cfg.idle_timeout_s
        try:
            # asyncio.timeout, not wait_for: no extra task per read
            async with asyncio.timeout(idle):
                head = await reader.read(1)
            if not head:
                return None
            if head == b"\n":
                return head
            async with asyncio.timeout(self.cfg.frame_timeout_s):
                rest = await reader.readuntil(b"\n")
            return head + rest
        except (asyncio.LimitOverrunError, ValueError):
            error = AgentcgError(
                "frame_too_large",
                f"frame exceeds {self.cfg.max_frame} bytes; "
                "send smaller requests (one JSON object per line)",
            )
        except TimeoutError:
            error = AgentcgError(
                "timeout",
                "connection idle or frame incomplete for too long; reconnect and send whole lines",
            )
        except asyncio.IncompleteReadError:
            return None
        except (ConnectionError, OSError):
            return None
        with contextlib.suppress(OSError, ConnectionError):
            out.flush(protocol.encode(protocol.err(None, error)))
            await out.writer.drain()
        return None


class _Outbox:
    """One connection's writes. Events pushed while the loop runs are held until the
    reply to the request being handled (one write: `ended` and the call.end reply) or,
    if none comes first, the next loop turn; the order of frames is kept."""

    def __init__(self, writer: asyncio.StreamWriter, pid: int) -> None:
        self.writer = writer
        self.pid = pid
        self._pending: list[bytes] = []
        self._size = 0

    def push(self, msg: dict[str, Any]) -> None:
        writer = self.writer
        if writer.is_closing():
            return
        transport = writer.transport
        if transport.get_write_buffer_size() + self._size > MAX_PENDING_WRITE:
            log.warning("pid %d is not reading its events; dropping it", self.pid)
            self._pending.clear()
            self._size = 0
            transport.abort()
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        frame = protocol.encode(msg)
        self._pending.append(frame)
        self._size += len(frame)

    def flush(self, last: bytes = b"") -> None:
        """Write what is pending, then `last` (a reply), in one write."""
        data = b"".join([*self._pending, last]) if self._pending else last
        self._pending.clear()
        self._size = 0
        if data and not self.writer.is_closing():
            self.writer.write(data)

"""The daemon's state machine: sessions, tool calls and their cgroups.

Data path: server.py hands a validated Request and its Peer to `Daemon.handle`;
policy.decide turns the intent into CallLimits; this module applies them to a
fresh cgroup, watches the kernel's events for it, and turns what happened into
an Outcome for the agent. Everything here runs on one asyncio loop, so state
changes need no locks; cgroupfs writes are fast in-memory syscalls.

cgroup layout (the no-internal-process rule holds at every level):
    <root>/supervisor/                      the daemon itself
    <root>/sessions/<session>/agent/        the adopted agent framework
    <root>/sessions/<session>/tools/<call>/ one leaf per tool call
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentcg import __version__
from agentcg.core.config import Config
from agentcg.core.errors import AgentcgError
from agentcg.core.intent import Intent, parse_intent
from agentcg.core.policy import (
    CallLimits,
    Outcome,
    RunningCall,
    advise,
    cpu_quota,
    decide,
    format_size,
    pick_victim,
    suggested_memory,
)
from agentcg.core.protocol import Request, negotiate_version
from agentcg.core.protocol import event as protocol_event
from agentcg.daemon.state import State
from agentcg.kernel.cgroup import Cgroup, CgroupError, find_cgroup2_mount
from agentcg.kernel.peer import Peer, is_descendant
from agentcg.kernel.watch import Watcher

log = logging.getLogger("agentcg.daemon.app")

CONTROLLERS = ("memory", "cpu", "pids")
THROTTLE_EVENT_INTERVAL_S = 1.0  # at most one "throttled" push per call per second
DRAIN_TIMEOUT_S = 5.0  # how long a killed call may take to empty
PRESSURE_CHECK_S = 0.25  # while a call is frozen: how often to see if memory came back


@dataclass
class Session:
    name: str
    owner_uid: int | None  # None: recovered without a record; admin only
    container: str | None
    memory: int | None
    cpu: float | None
    pids: int | None
    max_calls: int
    created: float
    adopted: dict[str, str] = field(default_factory=dict)  # pid -> cgroup it came from
    calls: set[str] = field(default_factory=set)
    high_events: int = 0  # last seen memory.events "high" of the session (escalation)

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("calls")
        d.pop("high_events")
        return d


@dataclass
class Call:
    id: str
    session: str
    token: str
    owner_uid: int
    owner_pid: int
    intent: Intent
    limits: CallLimits
    started: float
    state: str = "pending"  # pending -> running -> exited -> ended
    conn: Connection | None = None
    killed_reason: str | None = None
    timeout_timer: asyncio.TimerHandle | None = None
    orphan_timer: asyncio.TimerHandle | None = None  # armed after a restart until claimed
    high_events: int = 0
    oom_kills: int = 0
    last_throttle_push: float = 0.0
    frozen_at: float | None = None  # monotonic time of the freeze, while frozen
    was_frozen: bool = False

    def record(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "token": self.token,
            "owner_uid": self.owner_uid,
            "owner_pid": self.owner_pid,
            "intent": asdict(self.intent),
            "limits": self.limits.to_dict(),
            "started": self.started,
        }


@dataclass(frozen=True)
class Location:
    session: str | None
    call: str | None


def _pass_protection(cg: Cgroup) -> None:
    """memory.low only protects a leaf as far as every ancestor's memory.low allows,
    unless cgroup2 is mounted with memory_recursiveprot. Inner levels pass it all
    through, so a call's priority-derived memory.low takes effect either way."""
    cg.write("memory.low", "max")


def _session_from_record(rec: dict[str, Any]) -> Session | None:
    try:
        return Session(**rec)
    except TypeError:  # a record from another version: recover it as unowned
        return None


def _call_from_record(call_id: str, rec: dict[str, Any]) -> Call | None:
    try:
        return Call(
            id=call_id,
            session=rec["session"],
            token=rec["token"],
            owner_uid=rec["owner_uid"],
            owner_pid=rec["owner_pid"],
            intent=Intent(**rec["intent"]),
            limits=_limits_from_record(rec["limits"]),
            started=rec["started"],
            state="running",
        )
    except (KeyError, TypeError, IndexError):  # unusable: its call cannot be given back
        return None


def _limits_from_record(d: dict[str, Any]) -> CallLimits:
    cpu_max = d["cpu_max"]
    return CallLimits(
        memory_high=d["memory_high"],
        memory_max=d["memory_max"],
        memory_low=d["memory_low"],
        cpu_weight=d["cpu_weight"],
        cpu_max=(int(cpu_max[0]), int(cpu_max[1])) if cpu_max else None,
        pids_max=d["pids_max"],
        timeout_s=d["timeout_s"],
    )


class Connection:
    """What the daemon needs of a client connection: who, and how to push events."""

    def __init__(self, peer: Peer, push: Callable[[dict[str, Any]], None]) -> None:
        self.peer = peer
        self.push = push
        self.calls: set[str] = set()


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.root = Cgroup(cfg.daemon.root)
        self.sessions_cg = self.root.child("sessions")
        mount = find_cgroup2_mount() or Path("/sys/fs/cgroup")
        # cgroup paths as /proc/<pid>/cgroup shows them, relative to the mount
        self._sessions_prefix = f"/{self.sessions_cg.path.relative_to(mount)}/"
        self.sessions: dict[str, Session] = {}
        self.calls: dict[str, Call] = {}
        self.watcher: Watcher | None = None
        self.state = State(cfg.daemon.state_dir)
        self._tasks: set[asyncio.Task[Any]] = set()  # keeps timer-started work alive
        self._pressure_timers: dict[str, asyncio.TimerHandle] = {}
        self._handlers: dict[str, Callable[[Connection, dict[str, Any]], Awaitable[dict]]] = {
            "hello": self._hello,
            "session.open": self._session_open,
            "session.close": self._session_close,
            "session.status": self._session_status,
            "call.begin": self._call_begin,
            "call.attach": self._call_attach,
            "call.end": self._call_end,
            "call.status": self._call_status,
            "call.claim": self._call_claim,
            "list": self._list,
        }

    # ---------------------------------------------------------------- start-up

    def setup_hierarchy(self) -> None:
        """Create the subtree and move the daemon into its supervisor leaf."""
        mount = find_cgroup2_mount()
        if mount is None or not (mount / "cgroup.controllers").exists():
            raise AgentcgError(
                "unavailable", "no cgroup v2 hierarchy is mounted: run `agentcg doctor`"
            )
        parent = Cgroup(self.root.path.parent)
        missing = set(CONTROLLERS) - parent.controllers()
        if missing:
            raise AgentcgError(
                "unavailable",
                f"cgroup {parent.path} lacks controllers "
                f"{', '.join(sorted(missing))}: run `agentcg doctor`",
            )
        if parent.path == mount:
            parent.enable_controllers(CONTROLLERS)
        elif set(CONTROLLERS) - parent.subtree_control():
            raise AgentcgError(
                "unavailable",
                f"{parent.path} does not delegate {', '.join(CONTROLLERS)}"
                " to its children: set Delegate=yes on the unit or pick another root",
            )
        self.root.create(exist_ok=True)
        supervisor = self.root.child("supervisor").create(exist_ok=True)
        supervisor.add_process(os.getpid())
        self.root.enable_controllers(CONTROLLERS)
        self.sessions_cg.create(exist_ok=True)
        self.sessions_cg.enable_controllers(CONTROLLERS)
        for cg in (self.root, self.sessions_cg):
            _pass_protection(cg)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.setup_hierarchy()
        self.watcher = Watcher(loop)
        self.recover()

    def recover(self) -> None:
        """Rebuild sessions and calls from cgroupfs plus the state records."""
        saved, unreadable = self.state.load()
        for path in unreadable:
            log.warning("state record %s unreadable; recovering from cgroupfs alone", path)
        for scg in self.sessions_cg.children():
            rec = saved["sessions"].pop(scg.name, None)
            sess = _session_from_record(rec) if rec else None
            if sess is None:
                log.warning("session %s has no record; only admins can act on it", scg.name)
                sess = Session(
                    scg.name, None, None, None, None, None, self.cfg.session.max_calls, time.time()
                )
                self.state.put("sessions", sess.name, sess.record())
            self.sessions[sess.name] = sess
            self._watch_session(sess)
            for ccg in scg.child("tools").children() if scg.child("tools").exists() else []:
                rec = saved["calls"].pop(ccg.name, None)
                call = _call_from_record(ccg.name, rec) if rec else None
                if call is None or call.session != sess.name or not ccg.populated:
                    # Finished while we were down, or unknown: nothing to give back.
                    self._remove_cgroup(ccg, kill=True)
                    self.state.drop("calls", ccg.name)
                    continue
                self.calls[call.id] = call
                sess.calls.add(call.id)
                if ccg.frozen:  # frozen by our predecessor; a new pressure event re-decides
                    ccg.thaw()
                self._watch(call)
                self._arm_timeout(call)  # the deadline still counts from the call's start
                # Its agent must reconnect and claim it, else it is killed as orphaned.
                call.orphan_timer = asyncio.get_running_loop().call_later(
                    self.cfg.daemon.reclaim_grace_s, self._orphan_timeout, call.id
                )
                log.info("recovered running call %s in session %s", call.id, sess.name)
        for kind, records in saved.items():  # records whose cgroups are gone
            for name in records:
                self.state.drop(kind, name)

    # ---------------------------------------------------------------- dispatch

    async def handle(self, conn: Connection, req: Request) -> dict[str, Any]:
        if req.spec.admin and not self.is_admin(conn.peer):
            raise AgentcgError(
                "unauthorized",
                f"{req.op} is an admin operation; your uid "
                f"{conn.peer.uid} is not in the config's [admin] uids/gids",
            )
        return await self._handlers[req.op](conn, req.args)

    def is_admin(self, peer: Peer) -> bool:
        if peer.container is not None or self._locate(peer).session:
            return False  # root inside a container or a session is still an agent
        return peer.uid in self.cfg.admin.uids or peer.gid in self.cfg.admin.gids

    async def connection_lost(self, conn: Connection) -> None:
        """A client that dies mid-call loses its tool calls: kill and clean them up."""
        for call_id in list(conn.calls):
            call = self.calls.get(call_id)
            if call and call.conn is conn:
                await self._finish_if_live(call, "disconnect")

    # ---------------------------------------------------------------- sessions

    def _locate(self, peer: Peer) -> Location:
        """Which session (and tool call) the peer's cgroup puts it in, if any."""
        if not peer.cgroup.startswith(self._sessions_prefix):
            return Location(None, None)
        parts = peer.cgroup[len(self._sessions_prefix) :].split("/")
        call = parts[2] if len(parts) > 2 and parts[1] == "tools" else None
        return Location(parts[0] or None, call)

    def _authorize(self, peer: Peer, sess: Session) -> None:
        where = self._locate(peer)
        if where.call:
            # A tool may not steer its own session: close it, open others, adopt itself.
            raise AgentcgError(
                "unauthorized",
                f"a tool inside call {where.call} cannot act on sessions; "
                "its agent (the process that began the call) can",
            )
        if self.is_admin(peer) or where.session == sess.name:
            return
        if sess.owner_uid == peer.uid and sess.container == peer.container:
            return
        raise AgentcgError(
            "unauthorized",
            f"session {sess.name!r} belongs to another agent; open your own with session.open",
        )

    def _get_session(self, peer: Peer, name: str) -> Session:
        sess = self.sessions.get(name)
        if sess is None:
            raise AgentcgError("not_found", f"no session {name!r}: open it first with session.open")
        self._authorize(peer, sess)
        return sess

    def _default_session_name(self, peer: Peer) -> str:
        return f"ctr-{peer.container[:12]}" if peer.container else f"uid-{peer.uid}"

    async def _hello(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {
            "version": negotiate_version(args["version"]),
            "server": f"agentcg {__version__}",
            "peer": conn.peer.as_dict(),
        }
        where = self._locate(conn.peer)
        if where.session:
            result["session"] = where.session
        if where.call:
            result["call"] = where.call  # already inside a tool call: run nested tools directly
        return result

    async def _session_open(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("adopt") and conn.peer.container and not self.is_admin(conn.peer):
            raise AgentcgError(
                "unauthorized",
                "adopt would take the agent out of its container's cgroup and limits; "
                "open the session without adopt",
            )
        sess = self._open_session(conn.peer, args)
        if args.get("adopt"):
            self._adopt(sess, conn.peer)
        return {"session": sess.name, "cgroup": str(self._session_cg(sess.name).path)}

    def _open_session(self, peer: Peer, args: dict[str, Any]) -> Session:
        where = self._locate(peer)
        if where.call:
            raise AgentcgError(
                "unauthorized", f"a tool inside call {where.call} cannot open sessions"
            )
        default = where.session or self._default_session_name(peer)
        name = args.get("name") or default
        if name != default and name.startswith(("uid-", "ctr-")) and not self.is_admin(peer):
            raise AgentcgError(
                "invalid_value",
                f"session names starting uid- or ctr- are reserved for default sessions; "
                f"yours is {default!r}",
            )
        existing = self.sessions.get(name)
        if existing is not None:
            self._authorize(peer, existing)
            if not args.get("name"):
                return existing  # the peer's default session is opened once and reused
            raise AgentcgError(
                "conflict", f"session {name!r} is already open; close it or pick another name"
            )
        caps = self.cfg.session
        owned = sum(
            1
            for s in self.sessions.values()
            if (s.owner_uid, s.container) == (peer.uid, peer.container)
        )
        if owned >= caps.max_per_owner and not self.is_admin(peer):
            raise AgentcgError(
                "limit_exceeded",
                f"you already have {owned} sessions open (session.max_per_owner); close one first",
            )
        # Not asking must not get around the cap.
        memory = args.get("memory", caps.default_memory or caps.max_memory)
        if memory is not None and caps.max_memory is not None and memory > caps.max_memory:
            raise AgentcgError(
                "limit_exceeded",
                f"session memory {format_size(memory)} exceeds the configured cap "
                f"{format_size(caps.max_memory)}; ask for less",
            )
        sess = Session(
            name=name,
            owner_uid=peer.uid,
            container=peer.container,
            memory=memory,
            cpu=args.get("cpu"),
            pids=args.get("pids", caps.default_pids),
            max_calls=min(args.get("max_calls", caps.max_calls), caps.max_calls),
            created=time.time(),
        )
        scg = self._session_cg(name)
        try:
            scg.create()
            scg.enable_controllers(CONTROLLERS)
            scg.set_memory_max(sess.memory)
            if sess.memory is not None and caps.pressure_fraction < 1.0:
                # Throttle the session before its hard limit, and give the daemon the
                # moment to choose a victim instead of the kernel OOM killer.
                scg.set_memory_high(int(sess.memory * caps.pressure_fraction))
            scg.set_pids_max(sess.pids)
            if sess.cpu is not None:
                scg.set_cpu_max(cpu_quota(sess.cpu))
            scg.child("agent").create()
            tools = scg.child("tools").create()
            tools.enable_controllers(CONTROLLERS)
            for cg in (scg, tools):
                _pass_protection(cg)
        except (CgroupError, OSError) as e:
            self._remove_cgroup(scg, kill=True)
            raise AgentcgError(
                "internal", f"could not create session cgroup {scg.path}: {e}"
            ) from e
        self.sessions[name] = sess
        self._watch_session(sess)
        self.state.put("sessions", name, sess.record())
        log.info("session %s opened by uid %s container %s", name, peer.uid, peer.container)
        return sess

    def _adopt(self, sess: Session, peer: Peer) -> None:
        """Move the agent process itself into the session's agent/ leaf."""
        agent = self._session_cg(sess.name).child("agent")
        sess.adopted[str(peer.pid)] = peer.cgroup
        agent.add_process(peer.pid)
        self.state.put("sessions", sess.name, sess.record())

    def _session_cg(self, name: str) -> Cgroup:
        return self.sessions_cg.child(name)

    async def _session_close(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        sess = self._get_session(conn.peer, args["session"])
        # Gone for everyone else before the first await: a second close or a
        # call.begin racing this one gets not_found instead of a half-removed session.
        del self.sessions[sess.name]
        timer = self._pressure_timers.pop(sess.name, None)
        if timer:
            timer.cancel()
        killed = 0
        for call_id in list(sess.calls):
            call = self.calls.get(call_id)
            if call:
                killed += call.state in ("pending", "running")
                await self._finish_if_live(call, "session_closed")
        mount = find_cgroup2_mount() or Path("/sys/fs/cgroup")
        agent = self._session_cg(sess.name).child("agent")
        with contextlib.suppress(CgroupError, OSError):
            still_there = set(agent.procs())
            for pid, origin in sess.adopted.items():
                # Give adopted agents back to where they came from, if that still
                # exists; a pid no longer in agent/ exited (and may be recycled).
                if int(pid) in still_there:
                    with contextlib.suppress(CgroupError, OSError):
                        Cgroup(mount / origin.lstrip("/")).add_process(int(pid))
        await self._remove_cgroup_async(self._session_cg(sess.name))
        self.state.drop("sessions", sess.name)
        return {"closed": sess.name, "killed_calls": killed}

    async def _session_status(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        sess = self._get_session(conn.peer, args["session"])
        return self._session_view(sess)

    def _session_view(self, sess: Session) -> dict[str, Any]:
        scg = self._session_cg(sess.name)
        usage: dict[str, Any] = {}
        with contextlib.suppress(CgroupError, OSError):
            usage = {
                "memory_current": scg.memory_current(),
                "memory_peak": scg.memory_peak(),
                "pids_current": scg.pids_current(),
            }
        return {
            "session": sess.name,
            "owner_uid": sess.owner_uid,
            "container": sess.container,
            "memory": sess.memory,
            "calls": [
                self._call_view(self.calls[c]) for c in sorted(sess.calls) if c in self.calls
            ],
            "usage": usage,
        }

    async def _list(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return {"sessions": [self._session_view(s) for s in self.sessions.values()]}

    # ---------------------------------------------------------------- calls

    def _committed(self, sess: Session) -> int:
        return sum(self.calls[c].limits.memory_high or 0 for c in sess.calls if c in self.calls)

    async def _call_begin(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        peer = conn.peer
        intent = parse_intent(args["intent"], self.cfg)  # before any side effect
        where = self._locate(peer)
        if where.call:
            raise AgentcgError(
                "conflict",
                f"already inside tool call {where.call}: run the command directly "
                "(`agentcg run` does so by itself)",
            )
        name = args.get("session") or where.session
        sess = self._get_session(peer, name) if name else self._open_session(peer, {})
        if len(sess.calls) >= sess.max_calls:
            raise AgentcgError(
                "limit_exceeded",
                f"session {sess.name!r} already runs {len(sess.calls)} "
                "tool calls (its max_calls); wait for one to end",
            )
        limits = decide(intent, self.cfg, sess.memory, self._committed(sess))
        call_id = "c" + secrets.token_hex(6)
        ccg = self._session_cg(sess.name).child("tools").child(call_id)
        call = Call(
            id=call_id,
            session=sess.name,
            token=secrets.token_hex(16),
            owner_uid=peer.uid,
            owner_pid=peer.pid,
            intent=intent,
            limits=limits,
            started=time.time(),
            conn=conn,
        )
        try:
            ccg.create()
            self._apply(ccg, limits)
            self._watch(call)
        except (CgroupError, OSError) as e:
            self._unwatch(call)
            self._remove_cgroup(ccg, kill=True)
            raise AgentcgError(
                "internal", f"could not set up the call's cgroup {ccg.path}: {e}"
            ) from e
        self.calls[call_id] = call
        sess.calls.add(call_id)
        conn.calls.add(call_id)
        self._arm_timeout(call)
        self.state.put("calls", call_id, call.record())
        return {
            "call": call_id,
            "token": call.token,
            "session": sess.name,
            "cgroup": str(ccg.path),
            "limits": limits.to_dict(),
        }

    @staticmethod
    def _apply(cg: Cgroup, limits: CallLimits) -> None:
        cg.set_memory_high(limits.memory_high)
        cg.set_memory_max(limits.memory_max)
        cg.set_memory_low(limits.memory_low)
        cg.set_cpu_weight(limits.cpu_weight)
        cg.set_cpu_max(limits.cpu_max)
        cg.set_pids_max(limits.pids_max)
        # An OOM inside the call takes the whole call, never a stray half of it.
        cg.write("memory.oom.group", 1)

    def _owned_call(self, peer: Peer, call_id: str, token: str | None) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise AgentcgError("not_found", f"no running call {call_id!r}: it ended or never began")
        if token is not None and not secrets.compare_digest(token, call.token):
            raise AgentcgError("unauthorized", f"wrong token for call {call_id!r}")
        if not self.is_admin(peer):
            sess = self.sessions.get(call.session)
            if call.owner_uid != peer.uid or (sess and sess.container != peer.container):
                raise AgentcgError("unauthorized", f"call {call_id!r} belongs to another agent")
        return call

    async def _call_attach(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        """The tool process, before exec, asks to be placed into its call's cgroup."""
        peer = conn.peer
        call = self._owned_call(peer, args["call"], args["token"])
        if not is_descendant(peer.pid, call.owner_pid):
            raise AgentcgError(
                "unauthorized",
                f"pid {peer.pid} is not a descendant of the process "
                f"that began call {call.id}; only its own children can attach",
            )
        if call.state == "ended":
            raise AgentcgError("conflict", f"call {call.id} is ending; begin a new call")
        inside = self._locate(peer).call
        if inside and inside != call.id:
            raise AgentcgError(
                "unauthorized", f"pid {peer.pid} belongs to call {inside}; it cannot move"
            )
        ccg = self._call_cg(call)
        ccg.add_process(peer.pid)
        call.state = "running"
        return {"call": call.id, "cgroup": str(ccg.path)}

    async def _call_end(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        call = self._owned_call(conn.peer, args["call"], args["token"])
        outcome = await self._finish(call, exit_status=args.get("exit_status"))
        return outcome.to_dict()

    async def _call_status(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        call = self._owned_call(conn.peer, args["call"], None)
        return self._call_view(call)

    async def _call_claim(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        call = self._owned_call(conn.peer, args["call"], args["token"])
        if call.conn is not None and call.conn is not conn:
            call.conn.calls.discard(call.id)
        call.conn = conn
        conn.calls.add(call.id)
        if call.orphan_timer:
            call.orphan_timer.cancel()
            call.orphan_timer = None
        return {"call": call.id, "state": call.state}

    def _call_view(self, call: Call) -> dict[str, Any]:
        usage: dict[str, Any] = {}
        with contextlib.suppress(CgroupError, OSError):
            cg = self._call_cg(call)
            usage = {
                "memory_current": cg.memory_current(),
                "memory_peak": cg.memory_peak(),
                "memory_high_events": cg.memory_events().get("high", 0),
            }
        return {
            "call": call.id,
            "session": call.session,
            "label": call.intent.label,
            "state": call.state,
            "started": call.started,
            "limits": call.limits.to_dict(),
            "usage": usage,
        }

    def _call_cg(self, call: Call) -> Cgroup:
        return self._session_cg(call.session).child("tools").child(call.id)

    # ---------------------------------------------------------------- kernel events

    def _watch(self, call: Call) -> None:
        assert self.watcher is not None
        cg = self._call_cg(call)
        self.watcher.add(cg.path / "memory.events", lambda _p: self._on_memory_events(call.id))
        self.watcher.add(cg.path / "cgroup.events", lambda _p: self._on_cgroup_events(call.id))

    def _watch_session(self, sess: Session) -> None:
        if self.watcher and sess.memory is not None:
            name = sess.name
            self.watcher.add(
                self._session_cg(name).path / "memory.events",
                lambda _p: self._on_session_memory_events(name),
            )

    # ---------------------------------------------------------------- escalation
    # A session nearing its budget: the kernel throttles it at memory.high (step 1),
    # the daemon freezes its lowest-priority call (step 2) and, if memory does not
    # come back within freeze_grace_s, kills that call rather than the agent (step 3).

    def _on_session_memory_events(self, name: str) -> None:
        sess = self.sessions.get(name)
        if sess is None:
            return
        try:
            high = self._session_cg(name).memory_events().get("high", 0)
        except (CgroupError, OSError):
            return
        if high <= sess.high_events:
            return
        sess.high_events = high
        live = self._live_calls(sess)
        if any(c.frozen_at is not None for c in live):
            return  # one step at a time: the pending check decides what comes next
        victim = pick_victim(
            [
                RunningCall(
                    c.id,
                    self.cfg.priorities[c.intent.priority].kill_order,
                    self._memory_current(c),
                    c.frozen_at is not None,
                )
                for c in live
            ]
        )
        if victim is None:
            return
        call = self.calls[victim]
        try:
            self._call_cg(call).freeze()
        except (CgroupError, OSError) as e:
            log.warning("could not freeze call %s: %s", call.id, e)
            return
        call.frozen_at, call.was_frozen = time.monotonic(), True
        log.info("session %s under memory pressure: froze call %s", name, call.id)
        self._push(call, "frozen", {"reason": "session_pressure", "session": name})
        self._schedule_pressure_check(name, PRESSURE_CHECK_S)

    def _live_calls(self, sess: Session) -> list[Call]:
        calls = (self.calls.get(c) for c in sess.calls)
        return [
            c for c in calls if c and c.state in ("pending", "running") and c.killed_reason is None
        ]

    def _memory_current(self, call: Call) -> int:
        try:
            return self._call_cg(call).memory_current()
        except (CgroupError, OSError):
            return 0

    def _schedule_pressure_check(self, name: str, delay: float) -> None:
        old = self._pressure_timers.pop(name, None)
        if old:
            old.cancel()
        self._pressure_timers[name] = asyncio.get_running_loop().call_later(
            delay, self._pressure_check, name
        )

    def _pressure_check(self, name: str) -> None:
        self._pressure_timers.pop(name, None)
        sess = self.sessions.get(name)
        if sess is None:
            return
        frozen = [c for c in self._live_calls(sess) if c.frozen_at is not None]
        if not frozen:
            return
        scg = self._session_cg(name)
        try:
            current, high = scg.memory_current(), scg.read_int("memory.high")
        except (CgroupError, OSError):
            return
        now = time.monotonic()
        for call in frozen:
            if high is None or current < 0.9 * high:
                with contextlib.suppress(CgroupError, OSError):
                    self._call_cg(call).thaw()
                self._push(call, "thawed", {"frozen_s": round(now - (call.frozen_at or now), 3)})
                call.frozen_at = None
            elif now - (call.frozen_at or now) >= self.cfg.session.freeze_grace_s:
                log.info("session %s still under pressure: killing call %s", name, call.id)
                call.frozen_at = None
                self._spawn(self._kill(call.id, "pressure"))
            else:
                self._schedule_pressure_check(name, PRESSURE_CHECK_S)

    def _unwatch(self, call: Call) -> None:
        if self.watcher:
            cg = self._call_cg(call)
            self.watcher.remove(cg.path / "memory.events")
            self.watcher.remove(cg.path / "cgroup.events")

    def _on_memory_events(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        try:
            ev = self._call_cg(call).memory_events()
        except (CgroupError, OSError):
            return
        now = time.monotonic()
        if ev.get("oom_kill", 0) > call.oom_kills:
            call.oom_kills = ev["oom_kill"]
            call.killed_reason = call.killed_reason or "oom"
            self._push(
                call, "oom", {"oom_kills": call.oom_kills, "memory_max": call.limits.memory_max}
            )
        if ev.get("high", 0) > call.high_events:
            call.high_events = ev["high"]
            if now - call.last_throttle_push >= THROTTLE_EVENT_INTERVAL_S:
                call.last_throttle_push = now
                self._push(
                    call,
                    "throttled",
                    {
                        "memory_high": call.limits.memory_high,
                        "memory_high_events": call.high_events,
                    },
                )

    def _on_cgroup_events(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.state != "running":
            return
        with contextlib.suppress(CgroupError, OSError):
            if not self._call_cg(call).populated:
                call.state = "exited"

    def _push(self, call: Call, name: str, data: dict[str, Any]) -> None:
        if call.conn is not None:
            call.conn.push(protocol_event(name, call.id, data))

    def _orphan_timeout(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call and call.conn is None:
            log.info("call %s was not reclaimed after restart; killing it", call_id)
            self._spawn(self._finish_if_live(call, "disconnect"))

    def _arm_timeout(self, call: Call) -> None:
        if call.limits.timeout_s:
            left = max(0.0, call.started + call.limits.timeout_s - time.time())
            call.timeout_timer = asyncio.get_running_loop().call_later(
                left, lambda: self._spawn(self._kill(call.id, "timeout"))
            )

    async def _kill(self, call_id: str, reason: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.state == "ended":
            return
        call.killed_reason = call.killed_reason or reason
        cg = self._call_cg(call)
        with contextlib.suppress(CgroupError, OSError):
            cg.kill()
        self._push(call, "killed", {"reason": reason})

    # ---------------------------------------------------------------- ending

    async def _finish(
        self, call: Call, exit_status: int | None = None, kill_reason: str | None = None
    ) -> Outcome:
        """End a call: stop what is left of it, read its stats, remove its cgroup."""
        if call.state == "ended":
            raise AgentcgError("conflict", f"call {call.id} already ended")
        call.state = "ended"
        for timer in (call.timeout_timer, call.orphan_timer):
            if timer:
                timer.cancel()
        cg = self._call_cg(call)
        if kill_reason:
            call.killed_reason = call.killed_reason or kill_reason
            self._push(call, "killed", {"reason": kill_reason})
        # Whatever the tool left running in the background ends with the call.
        with contextlib.suppress(CgroupError, OSError):
            if cg.populated:
                cg.kill()
                await self._wait_empty(cg)
        outcome = self._outcome(call, cg, exit_status)
        self._unwatch(call)
        self._remove_cgroup(cg, kill=True)  # already empty: no wait
        self.calls.pop(call.id, None)
        sess = self.sessions.get(call.session)
        if sess:
            sess.calls.discard(call.id)
        if call.conn:
            call.conn.calls.discard(call.id)
        self._push(
            call, "ended", {"exit_status": exit_status, "killed_reason": outcome.killed_reason}
        )
        self.state.drop("calls", call.id)
        return outcome

    async def _finish_if_live(self, call: Call, reason: str) -> None:
        """Internal clean-up paths race each other (a disconnect during session.close);
        whichever comes second finds the call already ending and leaves it be."""
        if call.state != "ended":
            await self._finish(call, kill_reason=reason)

    async def _wait_empty(self, cg: Cgroup) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while cg.populated and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _outcome(self, call: Call, cg: Cgroup, exit_status: int | None) -> Outcome:
        stats: dict[str, Any] = {"peak": 0, "cpu": {}, "mev": {}, "psi": 0}
        with contextlib.suppress(CgroupError, OSError):
            stats["peak"] = cg.memory_peak() or cg.memory_current()
            stats["cpu"] = cg.cpu_stat()
            stats["mev"] = cg.memory_events()
            stats["psi"] = int(cg.pressure("memory").get("some", {}).get("total", 0))
        mev = stats["mev"]
        oom_kills = max(mev.get("oom_kill", 0), call.oom_kills)
        killed = call.killed_reason or ("oom" if oom_kills else None)
        outcome = Outcome(
            call=call.id,
            label=call.intent.label,
            exit_status=exit_status if exit_status is None or exit_status >= 0 else None,
            signal=-exit_status if exit_status is not None and exit_status < 0 else None,
            duration_s=round(time.time() - call.started, 3),
            peak_memory=stats["peak"],
            memory_requested=call.limits.memory_high,
            cpu_usage_us=stats["cpu"].get("usage_usec", 0),
            cpu_throttled_us=stats["cpu"].get("throttled_usec", 0),
            memory_high_events=max(mev.get("high", 0), call.high_events),
            oom_kills=oom_kills,
            pressure_some_us=stats["psi"],
            frozen=call.was_frozen,
            killed_reason=killed,
            advice=None,
        )
        outcome.advice = advise(outcome, call.limits, call.intent)
        outcome.suggested_memory = suggested_memory(outcome, call.limits)
        return outcome

    # ---------------------------------------------------------------- helpers

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove_cgroup_async(self, cg: Cgroup) -> None:
        """Kill what is left in a subtree and remove it without blocking the loop."""
        with contextlib.suppress(CgroupError, OSError):
            if cg.populated:
                cg.kill()
                await self._wait_empty(cg)
        self._remove_cgroup(cg, kill=True)

    def _remove_cgroup(self, cg: Cgroup, kill: bool) -> None:
        try:
            cg.remove_tree(kill=kill, timeout=DRAIN_TIMEOUT_S)
        except (CgroupError, OSError) as e:
            log.error("could not remove %s: %s", cg.path, e)

    async def shutdown(self) -> None:
        """Graceful stop: calls keep running; a restarted daemon adopts them."""
        if self.watcher:
            self.watcher.close()

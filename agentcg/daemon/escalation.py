"""Carries out the memory escalation decisions (agentcg.core.escalation) in each session.

A session is decided again when something may have changed: a report of trouble (a
call stuck over its memory.high, the session at its budget; from memdetect.py), a
call beginning or ending, or, while any of its calls is held back (throttled or
frozen) or, with ``memory.reserve = "growth"``, while calls of different priorities
share its budget (their growth must be measured before it is needed), a tick: every
``memory.recheck_s`` after a report or an action, doubling while decisions change
nothing, up to ``memory.recheck_max_s``. Reports that arrive
together are decided together on the next loop turn. The decision reads a Snapshot
from cgroupfs; each action is written to cgroupfs, published once as an event on its
call (with the numbers and ``at_ns``, the time of the write) and logged with call,
reason and numbers.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import time
from dataclasses import dataclass
from typing import Any

from agentcg.core import escalation
from agentcg.core.escalation import Act, Action, CallSnapshot, Reason, Snapshot
from agentcg.core.model import Call, Session
from agentcg.daemon.registry import Registry
from agentcg.kernel.cgroup import CgroupError

log = logging.getLogger("agentcg.daemon")
PAGE = mmap.PAGESIZE

GROWTH_WINDOW_S = 1.0  # a call's growth rate is measured over windows this long

# The metrics' action for each act (core.metrics.ACTIONS); a raised limit is a "raise".
_METRIC = {Act.FREEZE: "freeze", Act.THAW: "thaw", Act.KILL: "kill"}


@dataclass
class _Held:
    """What the daemon wrote to one call's memory.high, and what it told the agent."""

    high: int | None  # memory.high in force
    own: int | None  # the call's own: its ask, or its memory.max once raised
    throttled: bool = False  # "throttled" was pushed and not yet "released"
    seen: tuple[float, int] | None = None  # (monotonic s, memory.current): window start
    rate: int = 0  # growth per second the last windows showed, halving each window
    measured: bool = False  # a whole window has been seen

    def growth(self, now: float, usage: int) -> int | None:
        """Bytes per second the call is growing, for what is kept for it: what it grew
        in the window under way (since it began, or the last window closed) counted as
        one window's growth, however long or short the window has been (a burst seen
        late or early is not averaged away or blown up); or, if more, what earlier
        windows showed, halved per window. None until a whole window has been seen
        since the call began or was first looked at after a restart."""
        if self.seen is None:
            self.seen = (now, usage)
            return None
        since, before = self.seen
        rate = int(max(0, usage - before) / GROWTH_WINDOW_S)
        if now - since >= GROWTH_WINDOW_S:
            self.seen, self.rate, self.measured = (now, usage), max(rate, self.rate // 2), True
        return max(rate, self.rate) if self.measured else None


class Escalation:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self._held: dict[str, _Held] = {}
        self._stuck: dict[str, float] = {}  # call id -> first report (monotonic s)
        self._at_limit: dict[str, float] = {}  # session -> first report
        self._due: set[str] = set()
        self._ticks: dict[str, asyncio.TimerHandle] = {}
        self._interval: dict[str, float] = {}  # session -> its current tick

    # ------------------------------------------------------------ reports

    def call_stuck(self, call_id: str, detected: float) -> None:
        call = self.reg.calls.get(call_id)
        if call is not None and call.live:
            self._stuck.setdefault(call_id, detected)
            self.poke(call.session)

    def session_at_limit(self, name: str, detected: float) -> None:
        if name in self.reg.sessions:
            self._at_limit.setdefault(name, detected)
            self.poke(name)

    def poke(self, name: str) -> None:
        """Decide session ``name`` again on the next loop turn."""
        if name not in self._due:
            self._due.add(name)
            asyncio.get_running_loop().call_soon(self._decide, name)

    def begun(self, call: Call) -> None:
        """call.begin set memory.high to the call's ask (layout.create_call)."""
        high = call.limits.memory_high
        self._held[call.id] = _Held(high, high, seen=(time.monotonic(), 0))

    def forget(self, call: Call) -> None:
        """The call ended: drop what was kept for it; its session may have room now."""
        self._held.pop(call.id, None)
        self._stuck.pop(call.id, None)
        if call.session in self.reg.sessions:
            self._interval.pop(call.session, None)
            self.poke(call.session)

    def cancel(self, name: str) -> None:
        """The session is closing."""
        tick = self._ticks.pop(name, None)
        if tick:
            tick.cancel()
        self._at_limit.pop(name, None)
        self._interval.pop(name, None)

    # ------------------------------------------------------------ decide

    def _decide(self, name: str) -> None:
        self._due.discard(name)
        tick = self._ticks.pop(name, None)
        if tick:
            tick.cancel()
        sess = self.reg.sessions.get(name)
        if sess is None:
            return
        # At rest with the exited calls counted is at rest without them (at_rest holds
        # for any subset): only when it is not does each call's cgroup.events get read.
        calls = self.reg.live_calls(sess, exited=True)
        if not self._at_rest(name, calls):
            calls = self.reg.live_calls(sess)
        if self._at_rest(name, calls):
            self._interval.pop(name, None)
            return  # nothing to decide: no memory.current to read (each begin and end)
        try:
            snap = self._snapshot(sess, calls)
        except (CgroupError, OSError) as e:
            log.debug("session %s: no snapshot (%s)", name, e)
            return
        detected = [self._at_limit.pop(name, None), *(self._stuck.pop(c.id, None) for c in calls)]
        first = min((d for d in detected if d is not None), default=None)
        by_id = {c.id: c for c in calls}
        actions = escalation.decide(snap, self.reg.cfg.memory.tuning())
        for action in actions:
            self._act(sess, by_id[action.call], action, snap, first)
        if any(c.frozen_at is not None or self._held[c.id].throttled for c in calls) or (
            self._watch_growth(snap)
        ):
            cfg = self.reg.cfg.memory
            changed = bool(actions) or first is not None
            interval = escalation.next_recheck(
                self._interval.get(name), changed, cfg.recheck_s, cfg.recheck_max_s
            )
            self._interval[name] = interval
            self._ticks[name] = asyncio.get_running_loop().call_later(interval, self.poke, name)
        else:
            self._interval.pop(name, None)

    def _at_rest(self, name: str, calls: list[Call]) -> bool:
        if name in self._at_limit or any(c.id in self._stuck for c in calls):
            return False
        looks = []
        for c in calls:
            h = self._held.get(c.id)
            if h is None or h.throttled:  # not looked at yet, or told it is throttled
                return False
            rank = self.reg.cfg.priorities[c.intent.priority].kill_order
            looks.append((rank, c.frozen_at is not None, h.high, h.own))
        return escalation.at_rest(looks, self.reg.cfg.memory.tuning())

    def _watch_growth(self, snap: Snapshot) -> bool:
        """Whether to keep looking at a session where nothing is held back: when what is
        kept for higher calls follows their growth, it must be measured before a lower
        call's tripwire or the budget is reached."""
        return (
            self.reg.cfg.memory.reserve == "growth"
            and snap.budget is not None
            and len({c.rank for c in snap.calls}) > 1
        )

    def _snapshot(self, sess: Session, calls: list[Call]) -> Snapshot:
        reg = self.reg
        states = []
        now = time.monotonic()
        for c in calls:
            held = self._held.get(c.id) or self._first_look(c)
            usage = reg.call_cg(c).memory_current()
            states.append(
                CallSnapshot(
                    call=c.id,
                    rank=reg.cfg.priorities[c.intent.priority].kill_order,
                    usage=usage,
                    high=held.high,
                    own_high=held.own,
                    max=c.limits.memory_max,
                    frozen=c.frozen_at is not None,
                    stuck=c.id in self._stuck,
                    growth=held.growth(now, usage),
                )
            )
        usage = reg.layout.session(sess.name).memory_current()
        return Snapshot(sess.name, sess.budget, usage, sess.name in self._at_limit, tuple(states))

    def _first_look(self, call: Call) -> _Held:
        """What memory.high says when a recovered call is first decided: its ask, or
        whatever the previous daemon left (a tripwire, or a raised limit)."""
        ask = call.limits.memory_high
        now = self.reg.call_cg(call).read_int("memory.high")
        # The kernel keeps memory.high in whole pages: an ask reads back rounded down.
        if ask is None:
            held = _Held(now, None)  # "max", or a tripwire still to be lifted
        elif now == ask - ask % PAGE:
            held = _Held(ask, ask)
        elif now is None or now > ask:
            held = _Held(now, now)  # raised to its memory.max
        else:
            held = _Held(now, ask, throttled=True)
        self._held[call.id] = held
        return held

    # ------------------------------------------------------------ act

    def _act(
        self, sess: Session, call: Call, a: Action, snap: Snapshot, detected: float | None
    ) -> None:
        cg = self.reg.call_cg(call)
        held = self._held[call.id]
        usage = next(c.usage for c in snap.calls if c.call == call.id)
        try:
            if a.act is Act.SET_HIGH:
                cg.set_memory_high(a.memory_high)
            elif a.act is Act.FREEZE:
                cg.freeze()
            elif a.act is Act.THAW:
                cg.thaw()
        except (CgroupError, OSError) as e:
            log.warning("call %s: could not %s (%s): %s", call.id, a.act.value, a.reason.value, e)
            return
        at_ns = time.monotonic_ns()
        data: dict[str, Any] = {"reason": a.reason.value, "usage": usage, "at_ns": at_ns}
        event = self._record(call, held, a, data)
        if a.act is Act.KILL:
            self.reg.kill(call.id, "oom")  # pushes "killed" itself
        if event is not None:
            self.reg.push(call, event, data)
        if event is not None or a.act is Act.KILL:
            log.info(
                "session %s call %s (%s, %s): %s %s: %s",
                sess.name,
                call.id,
                call.intent.label,
                call.intent.priority,
                a.act.value,
                a.reason.value,
                a.detail,
            )
            metric = _METRIC.get(a.act) or ("raise" if a.reason is Reason.OVER_ASK else "throttle")
            if detected is not None:
                self.reg.stats.observe_latency(metric, detected)
        else:
            log.debug("session %s call %s: %s: %s", sess.name, call.id, a.act.value, a.detail)

    def _record(self, call: Call, held: _Held, a: Action, data: dict[str, Any]) -> str | None:
        """Keep the new state; the event to push for it, if it is a change the agent
        has not been told of (each state change is reported once)."""
        if a.act is Act.FREEZE:
            call.frozen_at, call.was_frozen = time.monotonic(), True
            data["session"] = call.session
            return "frozen"
        if a.act is Act.THAW:
            data["frozen_s"] = round(time.monotonic() - (call.frozen_at or time.monotonic()), 3)
            call.frozen_at = None
            return "thawed"
        if a.act is Act.KILL:
            return None
        old, held.high = held.high, a.memory_high
        data["memory_high"] = a.memory_high
        if a.reason is Reason.OVER_ASK:
            held.own = a.memory_high
            data.update(previous=old, memory_max=call.limits.memory_max)
            return "limit_raised"
        if a.reason is Reason.ROOM_FOR_HIGHER and not held.throttled:
            held.throttled = True
            data["memory_high_events"] = self._high_events(call)
            return "throttled"
        if held.throttled and a.memory_high == held.own:
            held.throttled = False
            return "released"
        return None

    def _high_events(self, call: Call) -> int:
        try:
            return self.reg.call_cg(call).memory_events().get("high", 0)
        except (CgroupError, OSError):
            return 0

"""Admission: a bounded, first-come-first-served wait for room in a session.

A call.begin that finds its session full may wait for room instead of failing: it
queues behind the earlier waiters of the same key (a session), goes once it is first
in line and its condition holds, and fails with ``limit_exceeded`` when its wait runs
out. The condition is the caller's (today the session's max_calls; memory admission
can reuse the same line).

One asyncio loop runs everything: a waiter re-checks its condition and its caller
takes the room in the same loop step, so the same room is never given twice. A
waiter that goes lets the next one re-check (room for two may have appeared).

    await admission.admit(session, blocked, wait_s, on_queued)  # then take the room
    admission.wake(session)            # room may have appeared (a call ended)
    admission.cancel(session, error)   # the session is gone: every waiter fails
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from agentcg.core.errors import AgentcgError

# Why a request cannot go now (one line, e.g. "session 'x' already runs 64 tool calls
# (its max_calls)"), or None when it can.
Blocked = Callable[[], str | None]
# Told once when a request joins the line: (why it waits, its position, 1 = first).
OnQueued = Callable[[str, int], None]


class _Waiter:
    def __init__(self) -> None:
        self.turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def signal(self) -> None:
        if not self.turn.done():
            self.turn.set_result(None)


class Admission:
    def __init__(self) -> None:
        self._lines: dict[str, deque[_Waiter]] = {}

    def waiting(self, key: str) -> int:
        """How many requests wait for `key`."""
        return len(self._lines.get(key, ()))

    async def admit(
        self, key: str, blocked: Blocked, wait_s: float, on_queued: OnQueued | None = None
    ) -> None:
        """Return when this request may go: at once if nobody waits for `key` and it is
        not blocked; otherwise after waiting its turn, at most `wait_s` seconds."""
        line = self._lines.get(key)
        reason = blocked()
        if not line and reason is None:
            return
        if reason is None:
            reason = f"{len(line or ())} earlier request(s) wait for room in {key!r}"
        if wait_s <= 0:
            raise AgentcgError("limit_exceeded", f"{reason}; wait for one to end")
        line = self._lines.setdefault(key, deque())
        me = _Waiter()
        line.append(me)
        if on_queued:
            on_queued(reason, len(line))
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    await me.turn
                    if line[0] is me and (reason := blocked()) is None:
                        return
                    me.turn = asyncio.get_running_loop().create_future()
        except TimeoutError:
            ahead = line.index(me)
            where = f", {ahead} ahead of it" if ahead else ""
            raise AgentcgError(
                "limit_exceeded",
                f"{reason or 'no room'} and no room came within its wait of {wait_s:g} s"
                f"{where}; retry later or raise the limit",
            ) from None
        finally:
            self._leave(key, me)

    def _leave(self, key: str, me: _Waiter) -> None:
        line = self._lines.get(key)
        if line is None:
            return
        if me in line:
            line.remove(me)
        if line:
            line[0].signal()  # the next one may go too, or is first now
        else:
            del self._lines[key]

    def wake(self, key: str) -> None:
        """Room may have appeared for `key`: the first waiter checks again."""
        line = self._lines.get(key)
        if line:
            line[0].signal()

    def cancel(self, key: str, error: AgentcgError) -> None:
        """`key` is gone: every request waiting for it fails with `error`."""
        for waiter in self._lines.pop(key, ()):
            if not waiter.turn.done():
                waiter.turn.set_exception(error)

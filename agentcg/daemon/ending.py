"""How a tool call ends, whoever ends it: its agent (call.end), a lost connection, a
session close, an orphan after a restart. Stops what is left, reads the outcome,
removes the cgroup, forgets the call."""

from __future__ import annotations

from agentcg.core.errors import AgentcgError
from agentcg.core.model import Call
from agentcg.core.policy import Outcome
from agentcg.daemon.events import KernelEvents
from agentcg.daemon.outcome import read_outcome
from agentcg.daemon.registry import CallRuntime, Connection, Registry
from agentcg.daemon.sched import SchedService

DRAIN_TIMEOUT_S = 5.0  # how long ending a call waits for what is left of it to die


class Ending:
    def __init__(self, reg: Registry, events: KernelEvents, sched: SchedService) -> None:
        self.reg = reg
        self.events = events
        self.sched = sched

    async def finish(
        self, call: Call, exit_status: int | None = None, kill_reason: str | None = None
    ) -> Outcome:
        """End a call: stop what is left of it, read its stats, remove its cgroup."""
        reg = self.reg
        if call.state == "ended":
            raise AgentcgError("conflict", f"call {call.id} already ended")
        call.state = "ended"
        rt = reg.runtime.get(call.id) or CallRuntime()
        rt.cancel_timers()
        if kill_reason:
            call.killed_reason = call.killed_reason or kill_reason
            reg.push(call, "killed", {"reason": kill_reason})
        cg = reg.call_cg(call)
        self.events.unwatch(call)  # the reaper watches cgroup.events from here on
        # The stats first: meanwhile a tool its agent has just reaped leaves the cgroup
        # (the kernel unlinks a dead task at its last context switch, after its parent's
        # wait returned), and the drain finds it empty instead of killing and waiting.
        outcome = read_outcome(call, cg, exit_status)
        outcome.sched = self.sched.finish(call, cg)
        # Empty by now, it goes at once (one rmdir). Else whatever the tool left running
        # in the background ends with the call; a task that cannot die yet
        # (uninterruptible sleep) delays only this reply, and its cgroup is removed in
        # the background once it is gone.
        await reg.reaper.remove(cg, DRAIN_TIMEOUT_S)
        reg.stats.call_ended(call.session, outcome)
        reg.calls.pop(call.id, None)
        sess = reg.sessions.get(call.session)
        if sess:
            sess.calls.discard(call.id)
            reg.admission.wake(sess.name)
        if rt.conn:
            rt.conn.calls.discard(call.id)
        reg.push(
            call, "ended", {"exit_status": exit_status, "killed_reason": outcome.killed_reason}
        )
        reg.runtime.pop(call.id, None)
        reg.state.drop("calls", call.id)
        return outcome

    async def finish_if_live(self, call: Call, reason: str) -> None:
        """Internal clean-up paths race each other (a disconnect during session.close);
        whichever comes second finds the call already ending and leaves it be."""
        if call.state != "ended":
            await self.finish(call, kill_reason=reason)

    async def connection_lost(self, conn: Connection) -> None:
        """A client that dies mid-call loses its tool calls: kill and clean them up."""
        for call_id in list(conn.calls):
            call = self.reg.calls.get(call_id)
            if call and self.reg.conn_of(call) is conn:
                await self.finish_if_live(call, "disconnect")

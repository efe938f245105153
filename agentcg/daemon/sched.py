"""The daemon's side of agentcg's sched_ext scheduler (agentcg.bpf.sched).

At start it loads the scheduler when [sched] enabled and the kernel has sched_ext; at
call.begin it writes the call's class and slice (core.sched.call_sched) into the
scheduler's map; at call.attach it puts the tool process on SCHED_EXT before it execs
(children inherit); at the end of a call it reads the call's scheduler statistics for
its outcome. Once a second it checks that the scheduler still runs. If it stopped (a
scheduler error, the watchdog, sysrq-S, someone unpinning it), tool calls are already
back on the fair class, where their cgroups' cpu.weight and cpu.max apply: the daemon
logs why, reports "fallback" and loads it again with backoff. Only the daemon holding
the host-wide scheduler lock (agentcg.daemon.lock) loads, unloads or uses it; another
daemon on the host falls back, and takes over once that one is gone.

Setting the policy here rather than in the client: the daemon has just verified the
process (SO_PEERCRED, token, ancestry) and moved it; it alone knows whether the
scheduler runs and whether the call may use it (a call capped by cpu.max stays on the
fair class, which enforces that); and a client cannot put anything else on SCHED_EXT.
Loads and unloads run in a worker thread: verification takes seconds under emulation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from agentcg.bpf import sched as scx
from agentcg.core.errors import AgentcgError
from agentcg.core.model import Call
from agentcg.core.sched import (
    call_sched,
    failures_after_stop,
    knobs,
    needs_policy,
    reload_delay,
    runs_on_ext,
)
from agentcg.daemon.lock import SCHED_LOCK, DaemonLock
from agentcg.daemon.registry import Registry
from agentcg.kernel.cgroup import Cgroup, CgroupError

log = logging.getLogger("agentcg.daemon")

POLL_S = 1.0  # how often to check that the scheduler still runs


class SchedService:
    """States: disabled (config), unsupported (kernel), loading, running, fallback."""

    def __init__(
        self, reg: Registry, scheduler: scx.Scheduler | None = None, lock_path: str = SCHED_LOCK
    ) -> None:
        self.reg = reg
        self.lock_path = lock_path
        self._lock: DaemonLock | None = None  # held while this daemon owns the scheduler
        self.sc = reg.cfg.sched
        self.scheduler = scheduler or scx.Scheduler()
        self.state = "disabled"
        self.reason: str | None = None  # why it is not running
        self.failures = 0  # stops and failed loads in a row
        self.loads = 0
        self._running_since = 0.0
        self._next_load = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._work: asyncio.Task[None] | None = None
        self._stopping = False
        self._cgids: dict[str, int] = {}  # call id -> its cgroup id, from begin to finish

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if not self.sc.enabled:
            self.reason = "sched.enabled is false"
        elif scx.kernel_state().state == "unsupported":
            self.state, self.reason = "unsupported", "this kernel has no sched_ext"
        else:
            self.state = "loading"
            self._work = asyncio.ensure_future(self._load(fresh=True))
        self._report()

    async def stop(self) -> None:
        """Unregister the scheduler: tool calls go on running on the fair class."""
        self._stopping = True
        if self._work:
            with contextlib.suppress(Exception):
                await self._work
        if self._timer:
            self._timer.cancel()
        if self._lock is not None and self.state in ("running", "fallback"):
            try:
                await asyncio.to_thread(self.scheduler.unload)
            except AgentcgError as e:
                log.warning("could not unload the agentcg scheduler: %s", e.message)
            log.info("agentcg scheduler unloaded")
        self.scheduler.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def _load(self, fresh: bool) -> None:
        """Load: fresh at start (a predecessor's scheduler and maps are replaced), else
        reusing the maps, whose settings are rewritten first: a bad entry that made the
        last one stop must not stop the next."""
        ks = scx.kernel_state()
        try:
            if self._lock is None:
                self._lock = DaemonLock.scheduler(self.lock_path)
            if ks.state == "enabled" and not ks.ours:
                raise AgentcgError(
                    "unavailable",
                    f"another sched_ext scheduler ({ks.ops}) is loaded; unload it to use agentcg's",
                )
            if not fresh:
                self._push_all()
            await asyncio.to_thread(
                self.scheduler.load, knobs(self.sc), self.sc.switch_all, not fresh
            )
        except (AgentcgError, OSError) as e:
            self.failures += 1
            self._fall_back(f"cannot load: {e.message if isinstance(e, AgentcgError) else e}")
        else:
            self.loads += 1
            self.state, self.reason = "running", None
            self._running_since = time.monotonic()
            mode = "every task" if self.sc.switch_all else "tool calls only (SCHED_EXT)"
            log.info("agentcg scheduler loaded: %s", mode)
            self._push_all()  # calls recovered, or begun while it loaded
        finally:
            self._work = None
        self._report()
        self._poll_later()

    def _fall_back(self, why: str) -> None:
        delay = reload_delay(self.failures, self.sc)
        self.state, self.reason = "fallback", why
        self._next_load = time.monotonic() + delay
        log.warning(
            "agentcg scheduler %s; tool calls run on the fair class with their cpu.weight "
            "and cpu.max; trying again in %g s",
            why,
            delay,
        )

    def _poll_later(self) -> None:
        if not self._stopping:
            self._timer = asyncio.get_running_loop().call_later(POLL_S, self._poll)

    def _poll(self) -> None:
        ks = scx.kernel_state()
        if self.state == "running" and not ks.ours and ks.state != "disabling":
            ex = self.scheduler.exit_info()
            ran = time.monotonic() - self._running_since
            self.failures = failures_after_stop(self.failures, ran)
            self._fall_back(f"stopped after {ran:.0f} s ({ex or f'kernel state {ks.state}'})")
        if self.state == "fallback" and time.monotonic() >= self._next_load:
            self.state = "loading"
            self._work = asyncio.ensure_future(self._load(fresh=False))
            return
        self._report(ks)
        self._poll_later()

    def _report(self, ks: scx.KernelState | None = None) -> None:
        ks = ks or scx.kernel_state()
        counters: dict[str, int] = {"loads": self.loads, "failures": self.failures}
        if self.state == "running":
            with contextlib.suppress(AgentcgError):
                counters.update(self.scheduler.counters())
        agentcg = f"{self.state}: {self.reason}" if self.reason else self.state
        self.reg.stats.set_sched_ext(ks.state, ops=ks.ops, agentcg=agentcg, counters=counters)

    # ------------------------------------------------------------ per call

    def _active(self) -> bool:
        return self._lock is not None and self.state in ("running", "fallback", "loading")

    def _session_cpu(self, call: Call) -> float | None:
        sess = self.reg.sessions.get(call.session)
        return sess.cpu if sess else None

    def _push_all(self) -> None:
        for call in list(self.reg.calls.values()):
            self.begin(call)

    def begin(self, call: Call) -> None:
        """The call's class and slice, before any of its processes runs."""
        if not self._active() or not runs_on_ext(call.limits, self._session_cpu(call), self.sc):
            return
        try:
            cgid = self._cgids[call.id] = self.reg.call_cg(call).cgroup_id
            self.scheduler.set_call(cgid, call_sched(call.intent, self.reg.cfg))
        except (AgentcgError, CgroupError) as e:
            log.debug("call %s: no scheduler settings (%s)", call.id, e.message)

    def attach(self, call: Call, pid: int) -> None:
        """Put the attaching tool process on SCHED_EXT (before it execs)."""
        if not self._active() or not needs_policy(call.limits, self._session_cpu(call), self.sc):
            return
        if scx.foreign_scheduler():
            return  # someone else's scheduler: leave the call on the fair class
        try:
            scx.set_policy(pid)
        except AgentcgError as e:
            log.warning("call %s stays on the fair class: %s", call.id, e.message)

    def finish(self, call: Call, cg: Cgroup) -> dict[str, int] | None:
        """The call's scheduler statistics (None if it had none), then forget it."""
        known = self._cgids.pop(call.id, None)
        if not self._active():
            return None
        try:
            cgid = cg.cgroup_id if known is None else known
            stats = self.scheduler.call_stats(cgid)
            self.scheduler.forget_call(cgid)
        except (AgentcgError, CgroupError) as e:
            log.debug("call %s: no scheduler statistics (%s)", call.id, e.message)
            return None
        return stats

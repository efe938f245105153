"""Memory trouble detection for escalation: which call is stuck over its memory.high,
which session is at its budget, as the kernel reports it.

Two paths, one at a time:

- **bpf**: bpf/memwatch.bpf.c (agentcg.bpf.memwatch), filtered in the kernel to the
  cgroup ids of the calls and sessions watched here. Compiling it takes seconds
  (minutes under emulation), so it loads on a worker thread after start; until then,
  and for good when it cannot load (memory.bpf = false, no bcc, no BTF, lockdown),
- **events**: POLLPRI on each cgroup's memory.events.local plus a PSI trigger on each
  call's memory.pressure (agentcg.kernel.pollwatch).

``status()`` says which path is active and why; the daemon logs each change
("memory detection: bpf ..." / "memory detection: staying on events: <why>").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from agentcg.bpf.events import EventKind, MemItem
from agentcg.bpf.memwatch import MemEvent, MemWatcher
from agentcg.core.errors import AgentcgError
from agentcg.core.model import Call, Session
from agentcg.daemon.escalation import Escalation
from agentcg.daemon.registry import Registry
from agentcg.kernel.cgroup import Cgroup, CgroupError
from agentcg.kernel.pollwatch import PollWatcher

log = logging.getLogger("agentcg.daemon")

FUTILE_BYTES = 32 * 4096  # the probe's FUTILE_PAGES: within this of memory.max is "at it"
EVENTS_FILE = "memory.events.local"


class MemDetect:
    def __init__(self, reg: Registry, escalation: Escalation) -> None:
        self.reg = reg
        self.escalation = escalation
        self.path = "events"
        self.why = "the BPF probe is not loaded yet"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll: PollWatcher | None = None
        self._bpf: MemWatcher | None = None  # once loaded
        self._ids: dict[int, tuple[str, str]] = {}  # cgroup id -> ("call", id) | ("session", name)
        self._cgroups: dict[tuple[str, str], Cgroup] = {}
        self._seen: dict[tuple[str, str], dict[str, int]] = {}  # memory.events.local counts

    # ------------------------------------------------------------ life

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._poll = PollWatcher(loop)
        if not self.reg.cfg.memory.bpf:
            self._stay("memory.bpf is false in the config")
            return
        threading.Thread(target=self._load, name="memwatch-load", daemon=True).start()

    def _load(self) -> None:
        started = time.monotonic()
        watcher = MemWatcher(self._on_bpf)
        try:
            watcher.load()
        except AgentcgError as e:
            err = e.message
            self._call_soon(lambda: self._stay(err))
            return
        except Exception as e:  # bcc fails in assorted ways; stay on the fallback
            err = f"{type(e).__name__}: {e}"
            self._call_soon(lambda: self._stay(err))
            return
        took = time.monotonic() - started
        self._call_soon(lambda: self._switch(watcher, took))

    def _call_soon(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                loop.call_soon_threadsafe(fn)

    def _stay(self, why: str) -> None:
        self.path, self.why = "events", why
        self.reg.stats.set_bpf_program("memwatch", kind="bcc", attached=False)
        log.warning("memory detection: staying on events (POLLPRI + PSI): %s", why)

    def _switch(self, watcher: MemWatcher, took: float) -> None:
        if self._loop is None:  # closed meanwhile
            watcher.close()
            return
        watcher.start(self._loop)
        for cgroup_id in self._ids:
            watcher.watch(cgroup_id)
        self._bpf = watcher
        for key in list(self._cgroups):
            self._unpoll(key)
        self.path, self.why = "bpf", f"memwatch probe loaded in {took:.1f} s"
        self.reg.stats.set_bpf_program("memwatch", kind="bcc", attached=True)
        log.info("memory detection: bpf (%s)", self.why)

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.close()
            self._bpf = None
        if self._poll is not None:
            self._poll.close()
            self._poll = None
        self._loop = None

    def status(self) -> dict[str, str]:
        return {"path": self.path, "why": self.why}

    # ------------------------------------------------------------ what is watched

    def watch_call(self, call: Call) -> None:
        self._watch(("call", call.id), self.reg.call_cg(call), pressure=True)

    def unwatch_call(self, call: Call) -> None:
        self._unwatch(("call", call.id))

    def watch_session(self, sess: Session) -> None:
        if sess.budget is not None:
            self._watch(("session", sess.name), self.reg.layout.session(sess.name), pressure=False)

    def unwatch_session(self, name: str) -> None:
        self._unwatch(("session", name))

    def _watch(self, key: tuple[str, str], cg: Cgroup, pressure: bool) -> None:
        try:
            cgroup_id = cg.cgroup_id
            if self._bpf is None:  # the counts _on_poll compares against; BPF needs none
                self._seen[key] = cg.read_keyed(EVENTS_FILE)
        except (CgroupError, OSError) as e:
            log.warning("cannot watch %s %s for memory trouble: %s", key[0], key[1], e)
            return
        self._ids[cgroup_id] = key
        self._cgroups[key] = cg
        if self._bpf is not None:
            self._bpf.watch(cgroup_id)
            return
        assert self._poll is not None
        try:
            self._poll.add_events(cg.path / EVENTS_FILE, lambda _p: self._on_poll(key))
        except OSError as e:  # EMFILE: the call runs on, unwatched; the log says so
            log.warning("cannot watch %s for memory trouble: %s", cg.path / EVENTS_FILE, e)
            return
        if pressure:
            m = self.reg.cfg.memory
            try:
                self._poll.add_pressure(
                    cg.path / "memory.pressure",
                    m.psi_stall_us,
                    m.psi_window_us,
                    lambda _p: self._on_poll(key),
                )
            except OSError as e:  # memory.events.local still reports
                log.warning("no PSI trigger on %s: %s", cg.path / "memory.pressure", e)

    def _unwatch(self, key: tuple[str, str]) -> None:
        cg = self._cgroups.pop(key, None)
        self._seen.pop(key, None)
        ids = [i for i, k in self._ids.items() if k == key]
        for cgroup_id in ids:
            del self._ids[cgroup_id]
            if self._bpf is not None:
                self._bpf.unwatch(cgroup_id)
        if cg is not None:
            self._unpoll(key, cg)

    def _unpoll(self, key: tuple[str, str], cg: Cgroup | None = None) -> None:
        cg = cg or self._cgroups.get(key)
        if self._poll is not None and cg is not None:
            self._poll.remove(cg.path / EVENTS_FILE)
            self._poll.remove(cg.path / "memory.pressure")

    # ------------------------------------------------------------ reports

    def _on_bpf(self, ev: MemEvent) -> None:
        key = self._ids.get(ev.cgroup_id)
        if key is None:
            return
        detected = ev.ts_ns / 1e9
        if ev.kind is EventKind.MEM_RECLAIM:
            self._report(key, detected)
        elif ev.item in (MemItem.MAX, MemItem.OOM) and key[0] == "session":
            self.escalation.session_at_limit(key[1], detected)

    def _on_poll(self, key: tuple[str, str]) -> None:
        cg = self._cgroups.get(key)
        if cg is None:
            return
        detected = time.monotonic()
        try:
            counts = cg.read_keyed(EVENTS_FILE)
        except (CgroupError, OSError):
            return
        before, self._seen[key] = self._seen.get(key, {}), counts
        if key[0] == "session":
            if any(counts.get(k, 0) > before.get(k, 0) for k in ("max", "oom")):
                self.escalation.session_at_limit(key[1], detected)
            return
        self._report(key, detected, check=cg)

    def _report(self, key: tuple[str, str], detected: float, check: Cgroup | None = None) -> None:
        """A call over its memory.high (or at its memory.max) with reclaim not helping,
        or a session at its budget. The fallback cannot see reclaim: it checks that the
        cgroup is still over its limit when it looks."""
        kind, name = key
        if check is not None and not _over_limit(check):
            return
        if kind == "session":
            self.escalation.session_at_limit(name, detected)
        else:
            self.escalation.call_stuck(name, detected)


def _over_limit(cg: Cgroup) -> bool:
    try:
        usage = cg.memory_current()
        high, mmax = cg.read_int("memory.high"), cg.read_int("memory.max")
    except (CgroupError, OSError):
        return False
    over_high = high is not None and usage > high
    return over_high or (mmax is not None and usage + FUTILE_BYTES >= mmax)

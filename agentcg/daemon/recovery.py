"""After a restart: rebuild sessions and calls from cgroupfs plus the state records.

Nothing here waits: cgroups of calls that finished while the daemon was down, and of
sessions nobody owns that are empty, are handed to the reaper, which removes them in
the background. Records were validated on load; one that does not match what cgroupfs
shows (another home, another session) is not trusted.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agentcg.core.model import Session, call_from_record, session_from_record
from agentcg.daemon.calls import Calls
from agentcg.daemon.events import KernelEvents
from agentcg.daemon.registry import Registry
from agentcg.kernel.cgroup import Cgroup, CgroupError

log = logging.getLogger("agentcg.daemon")


def recover(reg: Registry, events: KernelEvents, calls: Calls) -> None:
    saved, rejected = reg.state.load()
    for line in rejected:
        log.warning("state record rejected, %s; recovering from cgroupfs alone", line)
    reg.homes.load(saved["anchors"])
    records = saved["sessions"]
    places: list[tuple[str | None, Cgroup]] = [(None, c) for c in reg.layout.sessions.children()]
    for anchor in sorted(reg.homes.anchors):
        places += [(anchor, c) for c in reg.layout.sessions_of(anchor).children()]
    for home, scg in places:
        rec = records.pop(scg.name, None)
        if rec is not None and rec.get("home") != home:
            log.warning("session %s: its record names another home; not trusted", scg.name)
            rec = None
        _session(reg, events, calls, home, scg, rec, saved["calls"])
    for kind in ("sessions", "calls"):  # records whose cgroups are gone
        for name in saved[kind]:
            reg.state.drop(kind, name)


def _session(
    reg: Registry,
    events: KernelEvents,
    calls: Calls,
    home: str | None,
    scg: Cgroup,
    rec: dict[str, Any] | None,
    call_records: dict[str, dict[str, Any]],
) -> None:
    if scg.name in reg.sessions:
        log.warning("session %s exists twice (%s); leaving the second alone", scg.name, scg.path)
        return
    sess = session_from_record(rec) if rec else None
    if sess is None:
        try:
            empty = not scg.populated
        except (CgroupError, OSError):
            return
        if empty:  # made but never used (a crash before its record): nothing to keep
            reg.reaper.discard(scg)
            return
        log.warning("session %s has no record; only admins can act on it", scg.name)
        sess = Session(
            scg.name, None, None, None, None, None, reg.cfg.session.max_calls, time.time()
        )
        sess.home = home
        reg.state.put("sessions", sess.name, sess.record())
    reg.add_session(sess)
    events.watch_session(sess)
    tools = scg.child("tools")
    for ccg in tools.children() if tools.exists() else []:
        crec = call_records.pop(ccg.name, None)
        call = call_from_record(ccg.name, crec) if crec else None
        if call is None or call.session != sess.name or not ccg.populated:
            # Finished while we were down, or unknown: nothing to give back.
            reg.reaper.discard(ccg)
            reg.state.drop("calls", ccg.name)
            continue
        reg.calls[call.id] = call
        sess.calls.add(call.id)
        if ccg.frozen:  # frozen by our predecessor; a new pressure event re-decides
            ccg.thaw()
        # Its agent must reconnect and claim it, else it is killed as orphaned once the
        # socket is up and the grace has passed (Calls.serving).
        calls.adopt_recovered(call)
        log.info("recovered running call %s in session %s", call.id, sess.name)

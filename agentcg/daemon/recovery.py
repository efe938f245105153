"""After a restart: rebuild sessions and calls from cgroupfs plus the state records."""

from __future__ import annotations

import logging
import time

from agentcg.core.model import Session, call_from_record, session_from_record
from agentcg.daemon.calls import Calls
from agentcg.daemon.events import KernelEvents
from agentcg.daemon.registry import Registry

log = logging.getLogger("agentcg.daemon")


def recover(reg: Registry, events: KernelEvents, calls: Calls) -> None:
    saved, unreadable = reg.state.load()
    for path in unreadable:
        log.warning("state record %s unreadable; recovering from cgroupfs alone", path)
    for scg in reg.layout.sessions.children():
        rec = saved["sessions"].pop(scg.name, None)
        sess = session_from_record(rec) if rec else None
        if sess is None:
            log.warning("session %s has no record; only admins can act on it", scg.name)
            sess = Session(
                scg.name, None, None, None, None, None, reg.cfg.session.max_calls, time.time()
            )
            reg.state.put("sessions", sess.name, sess.record())
        reg.sessions[sess.name] = sess
        events.watch_session(sess)
        tools = scg.child("tools")
        for ccg in tools.children() if tools.exists() else []:
            rec = saved["calls"].pop(ccg.name, None)
            call = call_from_record(ccg.name, rec) if rec else None
            if call is None or call.session != sess.name or not ccg.populated:
                # Finished while we were down, or unknown: nothing to give back.
                reg.layout.remove(ccg)
                reg.state.drop("calls", ccg.name)
                continue
            reg.calls[call.id] = call
            sess.calls.add(call.id)
            if ccg.frozen:  # frozen by our predecessor; a new pressure event re-decides
                ccg.thaw()
            # Its agent must reconnect and claim it, else it is killed as orphaned.
            calls.adopt_recovered(call)
            log.info("recovered running call %s in session %s", call.id, sess.name)
    for kind, records in saved.items():  # records whose cgroups are gone
        for name in records:
            reg.state.drop(kind, name)

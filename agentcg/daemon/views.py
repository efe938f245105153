"""What status, list and call.status show of sessions and calls: their settings plus
live usage read from cgroupfs."""

from __future__ import annotations

import contextlib
from typing import Any

from agentcg.core.model import Call, Session
from agentcg.daemon.registry import Registry
from agentcg.kernel.cgroup import CgroupError


def call_view(reg: Registry, call: Call) -> dict[str, Any]:
    usage: dict[str, Any] = {}
    with contextlib.suppress(CgroupError, OSError):
        cg = reg.call_cg(call)
        usage = {
            "memory_current": cg.memory_current(),
            "memory_peak": cg.memory_peak(),
            "memory_high_events": cg.memory_events().get("high", 0),
        }
    return {
        "call": call.id,
        "session": call.session,
        "label": call.intent.label,
        "state": reg.call_state(call),
        "started": call.started,
        "limits": call.limits.to_dict(),
        "usage": usage,
    }


def session_view(reg: Registry, sess: Session) -> dict[str, Any]:
    scg = reg.layout.session(sess.name)
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
        "calls": [call_view(reg, reg.calls[c]) for c in sorted(sess.calls) if c in reg.calls],
        "usage": usage,
    }

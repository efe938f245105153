"""Memory trouble detection: whether the daemon's BPF probe (bpf/memwatch.bpf.c) can
load here, else why it falls back to memory.events.local POLLPRI plus PSI triggers;
and, when a daemon answers on its socket, which path it reports active."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from agentcg.bpf.memwatch import MEMCG_EVENT_FUNC, probe_defines
from agentcg.cli.doctor.base import OK, WARN, Check, Findings, Host
from agentcg.core.errors import AgentcgError

TRACEFS = Path("/sys/kernel/tracing")
TRACEPOINTS = (
    "vmscan/mm_vmscan_memcg_reclaim_end",
    "oom/mark_victim",
    "cgroup/cgroup_notify_frozen",
)
FALLBACK = "the daemon watches memory.events.local (POLLPRI) and PSI triggers instead"


def collect(host: Host) -> Findings:
    checks = [memwatch_check(host)]
    features = {"memwatch": checks[0].status == OK}
    daemon = daemon_check()
    if daemon is not None:
        checks.append(daemon)
    return checks, features


def memwatch_check(host: Host) -> Check:
    sources = ["import bcc", "BTF member offsets", f"ls {TRACEFS}/events"]
    why = _why_not(host)
    if why is None:
        fact = (
            "bpf: the daemon compiles and attaches bpf/memwatch.bpf.c at start (seconds; "
            "minutes under emulation) and acts on its events in milliseconds"
        )
        return Check("memwatch", OK, fact, "; ".join(sources), ("memwatch",))
    return Check("memwatch", WARN, f"events: {why}; {FALLBACK}", "; ".join(sources), ("memwatch",))


def _why_not(host: Host) -> str | None:
    if importlib.util.find_spec("bcc") is None:
        return "bcc is not importable (install python3-bpfcc)"
    build = Path("/lib/modules", os.uname().release, "build")
    if not build.exists():
        return f"no kernel headers at {build} for bcc"
    b = host.btf.btf
    if b is None:
        return f"no kernel BTF ({host.btf.why})"
    try:
        probe_defines(b, 4096)
    except AgentcgError as e:
        return e.message
    if not b.has_func(MEMCG_EVENT_FUNC):
        return f"the kernel has no {MEMCG_EVENT_FUNC} to probe"
    if (TRACEFS / "events").is_dir():
        missing = [t for t in TRACEPOINTS if not (TRACEFS / "events" / t).is_dir()]
        if missing:
            return f"tracepoints missing: {', '.join(missing)}"
    return None


def daemon_check() -> Check | None:
    """What a running daemon reports (the stats op), or None when none answers."""
    from agentcg.client import Client
    from agentcg.client.sdk import socket_path

    try:
        with Client() as c:
            view = c.request("stats").get("daemon", {})
    except (AgentcgError, OSError):
        return None
    progs = {p["name"]: p for p in view.get("bpf", [])}
    prog = progs.get("memwatch")
    if prog is None:
        status, fact = WARN, "daemon: events for now (its BPF probe is still loading)"
    elif prog["attached"]:
        status, fact = OK, "daemon: bpf (memwatch attached)"
    else:
        status, fact = WARN, f"daemon: events (memwatch could not load; see its log); {FALLBACK}"
    return Check("memory_detection", status, fact, f"stats op on {socket_path()}", ())

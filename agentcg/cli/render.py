"""Text views of a `stats` snapshot for `agentcg status` and `agentcg top`; pure.

Rates (CPU use, pressure stall) need two snapshots: ``prev`` and the seconds between
them; without a previous one they show as "-".
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentcg.core.policy import format_size

Snap = Mapping[str, Any]
COLUMNS = (
    "SESSION / CALL",
    "OWNER/TOOL",
    "STATE",
    "MEMORY",
    "PEAK",
    "LIMIT",
    "CPU%",
    "MEMPSI%",
    "AGE",
)
WIDTHS = (24, 10, 8, 10, 10, 10, 6, 8, 7)


@dataclass(frozen=True)
class Row:
    cells: tuple[str, ...]
    session: bool  # a session row (else one of its calls)

    def text(self) -> str:
        parts = [c[:w].ljust(w) for c, w in zip(self.cells, WIDTHS, strict=True)]
        return " ".join(parts).rstrip()


def header() -> str:
    return Row(COLUMNS, True).text()


def _size(n: Any) -> str:
    return format_size(int(n)) if isinstance(n, int | float) and n >= 0 else "-"


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


def _rate(now: float | None, before: float | None, dt: float) -> str:
    if now is None or before is None or dt <= 0:
        return "-"
    return f"{max(0.0, (now - before) / dt) * 100:.1f}"


def _usage(s: Snap, *path: str) -> float | None:
    node: Any = s.get("usage", {})
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def rows(snap: Snap, prev: Snap | None = None, dt: float = 0.0) -> list[Row]:
    """One row per session (with rates against ``prev``), then one per call of it."""
    before = {s["session"]: s for s in (prev or {}).get("sessions", [])}
    now = snap.get("time", time.time())
    out: list[Row] = []
    for s in sorted(snap.get("sessions", []), key=lambda s: s["session"]):
        old = before.get(s["session"], {})
        owner = "ctr" if s.get("container") else f"uid {s.get('owner_uid', '?')}"
        out.append(
            Row(
                (
                    s["session"],
                    owner,
                    f"{len(s.get('calls', []))} calls",
                    _size(_usage(s, "memory_current")),
                    _size(_usage(s, "memory_peak")),
                    _size(s.get("memory")),
                    _rate(_usage(s, "cpu_usage_s"), _usage(old, "cpu_usage_s"), dt),
                    _rate(
                        _usage(s, "pressure", "memory", "some"),
                        _usage(old, "pressure", "memory", "some"),
                        dt,
                    ),
                    _age(now - s["created"]) if "created" in s else "-",
                ),
                True,
            )
        )
        for c in s.get("calls", []):
            limits = c.get("limits", {})
            out.append(
                Row(
                    (
                        f"  {c['call']}",
                        c.get("label", ""),
                        c.get("state", ""),
                        _size(_usage(c, "memory_current")),
                        _size(_usage(c, "memory_peak")),
                        _size(limits.get("memory_max")),
                        "",
                        "",
                        _age(now - c["started"]) if "started" in c else "-",
                    ),
                    False,
                )
            )
    return out


def summary(snap: Snap) -> str:
    sessions = snap.get("sessions", [])
    calls = sum(len(s.get("calls", [])) for s in sessions)
    d = snap.get("daemon")
    if d is None:
        return f"your sessions: {len(sessions)}, tool calls running: {calls}"
    return (
        f"sessions: {d['sessions']}, tool calls running: {d['calls_running']}, "
        f"clients: {d['clients']}, sched_ext: {d['sched_ext']['state']}"
        + (f" (agentcg: {d['sched_ext']['agentcg']})" if d["sched_ext"].get("agentcg") else "")
    )


def actions(snap: Snap, limit: int) -> list[str]:
    """The last ``limit`` actions, newest first."""
    out = []
    for a in reversed(snap.get("recent_actions", [])[-limit:]):
        when = time.strftime("%H:%M:%S", time.localtime(a["time"]))
        what = f"{a['action']} ({a['reason']})" + (f" x{a['count']}" if a["count"] > 1 else "")
        out.append(f"{when}  {a['session']:<24} {a.get('call') or '-':<14} {what}")
    return out


def status_text(snap: Snap) -> str:
    """What `agentcg status` prints."""
    lines = [summary(snap), "", header(), *(r.text() for r in rows(snap))]
    if not snap.get("sessions"):
        lines.append("(no sessions)")
    recent = actions(snap, 10)
    if recent:
        lines += ["", "last actions:", *recent]
    return "\n".join(lines)

"""`agentcg top`: a live view of sessions, their tool calls and the last actions.

Reads the daemon's `stats` op every interval (one short connection each), so it needs
no root: a caller who is not an admin or a metrics reader sees its own sessions.
Keys: q quits; any other key refreshes now.
"""

from __future__ import annotations

import curses
import time
from typing import Any

from agentcg.cli import render
from agentcg.client.stats import fetch_stats
from agentcg.core.errors import AgentcgError

ACTION_LINES = 8


def run_top(interval: float, session: str | None, socket_path: str | None) -> None:
    curses.wrapper(_loop, interval, session, socket_path)


def _loop(scr: Any, interval: float, session: str | None, socket_path: str | None) -> None:
    curses.curs_set(0)
    scr.timeout(int(interval * 1000))
    prev: dict[str, Any] | None = None
    prev_t = 0.0
    while True:
        error = snap = None
        try:
            snap = fetch_stats(socket_path, session=session, timeout=max(2.0, interval))
        except AgentcgError as e:
            error = e.message
        now = time.monotonic()
        _draw(scr, snap, prev, now - prev_t, error, interval)
        if snap is not None:
            prev, prev_t = snap, now
        key = scr.getch()
        if key in (ord("q"), ord("Q")):
            return


def _draw(
    scr: Any,
    snap: dict[str, Any] | None,
    prev: dict[str, Any] | None,
    dt: float,
    error: str | None,
    interval: float,
) -> None:
    height, width = scr.getmaxyx()
    scr.erase()
    lines: list[tuple[str, int]] = [
        (f"agentcg top - every {interval:g}s - q quits", curses.A_BOLD),
    ]
    if error or snap is None:
        lines.append((f"cannot read stats: {error}", curses.A_BOLD))
    else:
        lines.append((render.summary(snap), 0))
        lines.append(("", 0))
        lines.append((render.header(), curses.A_REVERSE))
        rows = render.rows(snap, prev, dt)
        room = max(0, height - len(lines) - ACTION_LINES - 3)
        for row in rows[:room]:
            lines.append((row.text(), curses.A_BOLD if row.session else 0))
        if len(rows) > room:
            lines.append((f"... {len(rows) - room} more rows", 0))
        if not rows:
            lines.append(("(no sessions)", 0))
        lines.append(("", 0))
        lines.append(("last actions", curses.A_REVERSE))
        lines += [(a, 0) for a in render.actions(snap, ACTION_LINES)] or [("(none yet)", 0)]
    for y, (text, attr) in enumerate(lines[:height]):
        # The bottom-right cell cannot be written without an error; stay one short.
        scr.addnstr(y, 0, text, max(0, width - 1), attr)
    scr.refresh()

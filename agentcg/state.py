"""The daemon's small crash-safe state file.

cgroupfs is the source of truth for what exists; this file adds what cgroupfs
cannot hold (owners, tokens, intents) so a restarted daemon can re-authorize
the agents that reconnect. Written atomically (tmp file, rename) on every
change. No fsync: it lives on /run (tmpfs) and must survive a daemon crash,
which the page cache does; after a reboot there are no calls left to recover.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = 1


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"sessions": {}, "calls": {}}
    except (OSError, ValueError):
        # A torn or foreign file must not stop recovery: cgroupfs still says what exists.
        return {"sessions": {}, "calls": {}, "corrupt": True}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {"sessions": {}, "calls": {}, "corrupt": True}
    data.setdefault("sessions", {})
    data.setdefault("calls", {})
    return data


def save(path: Path, sessions: dict[str, Any], calls: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    body = json.dumps({"format": FORMAT, "sessions": sessions, "calls": calls}).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    os.replace(tmp, path)

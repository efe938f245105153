"""The daemon's small crash-safe state: one JSON file per session and per call.

cgroupfs is the source of truth for what exists; these files add what cgroupfs
cannot hold (owners, tokens, intents) so a restarted daemon can re-authorize
the agents that reconnect. One file per record keeps every change O(1) however
many calls run (a single file would be rewritten whole on each begin and end).
Each write is atomic (tmp file, rename). No fsync: the directory lives on /run
(tmpfs) and must survive a daemon crash, which the page cache does; after a
reboot there are no calls left to recover.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = 2
KINDS = ("sessions", "calls")


class State:
    def __init__(self, directory: Path) -> None:
        self.dir = directory / f"state.v{FORMAT}"

    def load(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """All records by kind, and the names of files that could not be read."""
        found: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        unreadable: list[str] = []
        for kind in KINDS:
            folder = self.dir / kind
            if not folder.is_dir():
                continue
            for path in folder.glob("*.json"):
                try:
                    record = json.loads(path.read_text())
                except (OSError, ValueError):
                    # A torn or foreign file must not stop recovery: cgroupfs still says
                    # what exists; this record's owner just cannot be re-authorized.
                    unreadable.append(str(path))
                    continue
                if isinstance(record, dict):
                    found[kind][path.stem] = record
                else:
                    unreadable.append(str(path))
        return found, unreadable

    def put(self, kind: str, name: str, record: dict[str, Any]) -> None:
        folder = self.dir / kind
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(record).encode())
        finally:
            os.close(fd)
        os.replace(tmp, folder / f"{name}.json")

    def drop(self, kind: str, name: str) -> None:
        (self.dir / kind / f"{name}.json").unlink(missing_ok=True)

"""Running agentcg's clients as another uid from any checkout.

The checkout and its venv may live in a private directory (a clone in a 0700
``mktemp -d``, root's home) that another uid cannot enter. Tests that run the SDK, the
CLI or the exporter as an agent or reader uid use the base interpreter and a
world-readable copy of the agentcg package and of the pure-Python packages those need.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import prometheus_client
import pytest

import agentcg


@dataclass(frozen=True)
class ForOthers:
    python: str  # the base interpreter, runnable by every uid
    path: Path  # PYTHONPATH: agentcg, click, prometheus_client, readable by every uid

    def env(self, socket: Path) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(self.path),
            "PYTHONDONTWRITEBYTECODE": "1",
            "AGENTCG_SOCKET": str(socket),
            "HOME": "/",
        }

    def as_uid(self, uid: int, socket: Path) -> dict[str, Any]:
        """subprocess.run/Popen arguments that run as ``uid`` (its own group, no others)
        in this environment, from /."""
        return {
            "user": uid,
            "group": uid,
            "extra_groups": [],
            "env": self.env(socket),
            "cwd": "/",
        }


@pytest.fixture(scope="session")
def for_others() -> Iterator[ForOthers]:
    with tempfile.TemporaryDirectory(prefix="agentcg-for-other-uids-") as tmp:
        top = Path(tmp)  # in /tmp (1777); made 0755 below
        skip = shutil.ignore_patterns("__pycache__")
        for mod in (agentcg, click, prometheus_client):
            src = Path(mod.__file__ or "").parent
            shutil.copytree(src, top / src.name, ignore=skip)
        for d, _, files in os.walk(top):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        yield ForOthers(str(Path(sys._base_executable).resolve()), top)

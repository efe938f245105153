"""Fixtures shared by the host tests that talk to the fake daemon (test_client, test_run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host.fake_daemon import FakeDaemon


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "agentcg.sock"


@pytest.fixture
def daemon(sock_path: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon(sock_path)
    yield d
    d.stop()

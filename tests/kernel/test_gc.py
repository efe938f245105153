"""Sessions whose owner is gone are closed after session.orphan_grace_s; sessions whose
owner is still connected stay."""

from __future__ import annotations

import subprocess
import time

import pytest

from agentcg.client import Client
from agentcg.client.stats import fetch_stats
from tests.kernel.daemon_fixture import RunningDaemon
from tests.kernel.other_uid import ForOthers

pytestmark = pytest.mark.kernel

AGENT_UID = 4242
WAIT_S = 120.0
GRACE = "[session]\norphan_grace_s = 2"

# An agent that opens a session and exits without closing it.
FLEETING = "from agentcg.client import Client; Client().open_session('fleeting')"


def names() -> set[str]:
    return {s["session"] for s in fetch_stats()["sessions"]}


@pytest.mark.parametrize("daemon", [GRACE], indirect=True)
def test_a_gone_owners_session_is_closed_a_connected_owners_stays(
    daemon: RunningDaemon, for_others: ForOthers
) -> None:
    with Client() as c:
        c.open_session("kept")  # its owner stays connected throughout
        subprocess.run(
            [for_others.python, "-c", FLEETING],
            **for_others.as_uid(AGENT_UID, daemon.socket),
            check=True,
            timeout=WAIT_S,
        )
        assert {"kept", "fleeting"} <= names()
        gone_at = time.monotonic()
        deadline = gone_at + WAIT_S
        while "fleeting" in names():
            assert time.monotonic() < deadline, "the orphaned session was never closed"
            time.sleep(0.2)
        # Not before the grace (2 s) had passed.
        assert time.monotonic() - gone_at >= 1.5
        assert "kept" in names()
        assert "session fleeting: its owner is gone; closing it" in daemon.log_tail(100_000)
    assert not (daemon.root.path / "sessions" / "fleeting").exists()

"""A scripted coding agent that shows the per-tool-call loop end to end.

It opens a session with a memory budget, then runs the kind of tool calls an
agent makes: a cheap git-like call, a test run that fits its ask, a test run
that bursts past it and is OOM-killed on its own (the agent survives), and a
retry at the size the daemon's advice suggests.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from agentcg.client import Client
from agentcg.core.policy import format_size

# A stand-in for a test run: touches N MiB, like a pytest session loading fixtures.
BURST = (
    "import sys, time\n"
    "b = bytearray(int(sys.argv[1]) << 20)\n"
    "b[::4096] = b'x' * len(b[::4096])\n"
    "time.sleep(0.2)\n"
)


def _describe(step: str, outcome: dict[str, Any]) -> str:
    status = (
        f"killed ({outcome['killed_reason']})"
        if outcome["killed_reason"]
        else f"exit {outcome['exit_status']}"
    )
    return (
        f"  {step:<34} {status:<14} peak {format_size(outcome['peak_memory']):>10}"
        f"  high-events {outcome['memory_high_events']:<4} {outcome['duration_s']:.2f}s"
    )


def run_demo(session: str = "demo") -> int:
    py = sys.executable
    with Client() as client:
        print(f"demo agent (pid {os.getpid()}) connected: {client.server['server']}")
        # 768 MiB: within the default cap (half of what is available) of a 2 GiB VM.
        client.open_session(session, memory="768M")
        print(f"session {session!r} opened with a 768 MiB budget\n")
        steps: list[tuple[str, dict[str, Any], list[str]]] = [
            ("git status (low)", {"memory": "low", "label": "git"}, ["true"]),
            (
                "pytest, fits its 256M ask",
                {"memory": "256M", "priority": "high", "label": "pytest"},
                [py, "-c", BURST, "100"],
            ),
            (
                "pytest, bursts to 300M on 128M",
                {"memory": "128M", "label": "pytest"},
                [py, "-c", BURST, "300"],
            ),
        ]
        advice = None
        for step, intent, argv in steps:
            with client.tool_call(session=session, **intent) as call:
                call.run(argv)
            assert call.outcome is not None
            print(_describe(step, call.outcome))
            if call.outcome["advice"]:
                advice = call.outcome
                print(f"    advice: {call.outcome['advice']}")
        if advice is None:
            print("\nno call hit its limit; nothing to retry")
            return 1
        # Retry at the size the daemon suggests, a few times at most, as an agent
        # following the advice would (an OOM-killed call's peak is its limit, not its need).
        for _ in range(4):
            retry = advice["suggested_memory"]
            with client.tool_call(session=session, memory=retry, label="pytest") as call:
                call.run([py, "-c", BURST, "300"])
            assert call.outcome is not None
            outcome: dict[str, Any] = call.outcome
            print(_describe(f"retry asking {format_size(retry)}", outcome))
            if not outcome["suggested_memory"]:
                break
            advice = outcome
        status = client.request("session.status", session=session)
        print(
            f"\nsession peak {format_size(status['usage'].get('memory_peak') or 0)}; "
            f"the agent process was never touched"
        )
        client.close_session(session)
        return 0 if outcome["exit_status"] == 0 else 1


def main() -> int:
    return run_demo()


if __name__ == "__main__":
    sys.exit(main())

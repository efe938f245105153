"""The daemon's per-connection writes: events and the reply they precede go out in
one write, in order; events pushed outside a request go out on the next loop turn."""

import asyncio
import json
from typing import Any

from agentcg.daemon.server import MAX_PENDING_WRITE, _Outbox


class FakeTransport:
    def __init__(self) -> None:
        self.buffered = 0
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True


class FakeWriter:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.writes: list[bytes] = []

    def is_closing(self) -> bool:
        return self.transport.aborted

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def frames(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


def test_events_and_reply_in_one_write_in_order() -> None:
    async def run() -> FakeWriter:
        writer = FakeWriter()
        out = _Outbox(writer, 1)  # type: ignore[arg-type]
        out.push({"event": "ended", "n": 1})
        out.flush(b'{"ok": true}\n')
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        return writer

    writer = asyncio.run(run())
    assert len(writer.writes) == 1
    assert frames(writer.writes[0]) == [{"event": "ended", "n": 1}, {"ok": True}]


def test_events_without_a_reply_go_out_on_the_next_loop_turn() -> None:
    async def run() -> tuple[int, FakeWriter]:
        writer = FakeWriter()
        out = _Outbox(writer, 1)  # type: ignore[arg-type]
        out.push({"event": "waiting"})
        out.push({"event": "throttled"})
        before = len(writer.writes)
        await asyncio.sleep(0)
        return before, writer

    before, writer = asyncio.run(run())
    assert before == 0
    assert len(writer.writes) == 1
    assert [f["event"] for f in frames(writer.writes[0])] == ["waiting", "throttled"]


def test_a_client_that_does_not_read_is_dropped() -> None:
    async def run() -> FakeWriter:
        writer = FakeWriter()
        writer.transport.buffered = MAX_PENDING_WRITE + 1
        out = _Outbox(writer, 1)  # type: ignore[arg-type]
        out.push({"event": "oom"})
        await asyncio.sleep(0)
        return writer

    writer = asyncio.run(run())
    assert writer.transport.aborted
    assert writer.writes == []

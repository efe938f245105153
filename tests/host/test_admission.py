"""agentcg.daemon.admission: the first-come-first-served wait for room in a session."""

from __future__ import annotations

import asyncio

import pytest

from agentcg.core.errors import AgentcgError
from agentcg.daemon.admission import Admission


class Room:
    """A session with `slots` slots; holders take one when admitted."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.used = 0

    def blocked(self) -> str | None:
        return None if self.used < self.slots else f"all {self.slots} slots taken"


async def enter(adm: Admission, room: Room, name: str, order: list[str], wait_s: float) -> None:
    await adm.admit("s", room.blocked, wait_s)
    assert room.used < room.slots, "admitted without room"
    room.used += 1
    order.append(name)


def test_goes_at_once_with_room_and_fails_at_once_without_a_wait():
    async def main() -> None:
        adm, room = Admission(), Room(1)
        await adm.admit("s", room.blocked, 0)
        room.used = 1
        with pytest.raises(AgentcgError) as e:
            await adm.admit("s", room.blocked, 0)
        assert e.value.code == "limit_exceeded" and "all 1 slots taken" in e.value.message

    asyncio.run(main())


def test_waiters_go_in_arrival_order_and_never_over_the_limit():
    async def main() -> None:
        adm, room = Admission(), Room(2)
        room.used = 2
        order: list[str] = []
        queued: list[tuple[str, int]] = []
        tasks = []
        for name in "abcde":
            tasks.append(asyncio.create_task(enter(adm, room, name, order, 5)))
            await asyncio.sleep(0)
        await adm.admit("x", lambda: None, 0)  # another key is not held up
        assert adm.waiting("s") == 5 and order == []
        # Two slots free at once: the first two go, in order, and no more.
        room.used = 0
        adm.wake("s")
        await asyncio.sleep(0.01)
        assert order == ["a", "b"] and adm.waiting("s") == 3
        # A newcomer with room free queues behind the others instead of jumping them.
        room.used = 1
        late = asyncio.create_task(
            adm.admit("s", room.blocked, 5, lambda why, pos: queued.append((why, pos)))
        )
        await asyncio.sleep(0)
        assert queued == [("3 earlier request(s) wait for room in 's'", 4)]
        adm.wake("s")
        await asyncio.sleep(0.01)
        assert order == ["a", "b", "c"]
        for _ in range(2):
            room.used -= 1
            adm.wake("s")
            await asyncio.sleep(0.01)
        assert order == ["a", "b", "c", "d", "e"]
        room.used = 0
        adm.wake("s")
        await late
        await asyncio.gather(*tasks)
        assert adm.waiting("s") == 0

    asyncio.run(main())


def test_a_wait_that_runs_out_fails_and_lets_the_next_one_check():
    async def main() -> None:
        adm, room = Admission(), Room(1)
        room.used = 1
        order: list[str] = []
        first = asyncio.create_task(enter(adm, room, "first", order, 0.05))
        await asyncio.sleep(0)
        second = asyncio.create_task(enter(adm, room, "second", order, 5))
        await asyncio.sleep(0)
        with pytest.raises(AgentcgError) as e:
            await first
        assert e.value.code == "limit_exceeded"
        assert "all 1 slots taken and no room came within its wait of 0.05 s" in e.value.message
        assert adm.waiting("s") == 1
        room.used = 0
        adm.wake("s")
        await second
        assert order == ["second"]

    asyncio.run(main())


def test_cancel_fails_every_waiter():
    async def main() -> None:
        adm, room = Admission(), Room(0)
        tasks = [asyncio.create_task(adm.admit("s", room.blocked, 5)) for _ in range(3)]
        await asyncio.sleep(0)
        adm.cancel("s", AgentcgError("not_found", "session 's' was closed"))
        for t in tasks:
            with pytest.raises(AgentcgError, match="was closed"):
                await t
        assert adm.waiting("s") == 0

    asyncio.run(main())

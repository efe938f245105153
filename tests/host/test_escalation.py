"""The memory escalation decision (agentcg.core.escalation): snapshots in, actions out."""

from __future__ import annotations

from agentcg.core.escalation import (
    Act,
    Action,
    CallSnapshot,
    MemoryConfig,
    Reason,
    Snapshot,
    Tuning,
    at_rest,
    decide,
    next_recheck,
)

MiB = 1024**2
T = Tuning(step=16 * MiB, thaw_room=32 * MiB)
HIGH, LOW = 20, 0


def call(
    name: str,
    rank: int,
    usage: int,
    high: int | None,
    max: int | None = None,
    *,
    own: int | None = -1,
    frozen: bool = False,
    stuck: bool = False,
) -> CallSnapshot:
    own_high = high if own == -1 else own
    mmax = max if max is not None else (None if own_high is None else own_high * 5 // 4)
    return CallSnapshot(name, rank, usage, high, own_high, mmax, frozen, stuck)


def snap(
    *calls: CallSnapshot,
    budget: int | None = 1000 * MiB,
    usage: int | None = None,
    at_limit: bool = False,
) -> Snapshot:
    used = sum(c.usage for c in calls) if usage is None else usage
    return Snapshot("s", budget, used, at_limit, calls)


def acts(actions: list[Action]) -> list[tuple[Act, str, Reason, int | None]]:
    return [(a.act, a.call, a.reason, a.memory_high) for a in actions]


# --- rule 1: stuck over its own ask -----------------------------------------------------


def test_a_call_stuck_over_its_ask_gets_its_memory_max_at_once():
    c = call("c1", HIGH, 65 * MiB, 64 * MiB, 80 * MiB, stuck=True)
    out = decide(snap(c, budget=None), T)
    assert acts(out) == [(Act.SET_HIGH, "c1", Reason.OVER_ASK, 80 * MiB)]
    assert "64.0 MiB" in out[0].detail and "80.0 MiB" in out[0].detail


def test_without_a_memory_max_the_raise_goes_to_max():
    c = CallSnapshot("c1", HIGH, 65 * MiB, 64 * MiB, 64 * MiB, None, False, True)
    assert acts(decide(snap(c, budget=None), T)) == [(Act.SET_HIGH, "c1", Reason.OVER_ASK, None)]


def test_a_call_stuck_at_its_ceiling_is_killed():
    c = call("c1", HIGH, 80 * MiB, 80 * MiB, 80 * MiB, stuck=True)
    assert acts(decide(snap(c), T)) == [(Act.KILL, "c1", Reason.AT_CEILING, None)]


def test_not_stuck_means_nothing_to_do():
    c = call("c1", HIGH, 65 * MiB, 64 * MiB, 80 * MiB)
    assert decide(snap(c, budget=None), T) == []
    assert decide(snap(c), T) == []


# --- rule 2: priorities between ranks -------------------------------------------------


def test_equal_ranks_are_left_alone():
    a = call("a", LOW, 400 * MiB, 1000 * MiB)
    b = call("b", LOW, 500 * MiB, 1000 * MiB)
    assert decide(snap(a, b), T) == []


def test_a_lower_call_gets_a_tripwire_at_its_share_of_the_room():
    # budget 1000, used 100 + 300 = 400; HIGH may still claim 512 - 100 = 412:
    # room for LOW = 1000 - 400 - 412 = 188 MiB, so memory.high = 300 + 188.
    high = call("h", HIGH, 100 * MiB, 512 * MiB)
    low = call("l", LOW, 300 * MiB, 1000 * MiB)
    out = decide(snap(high, low), T)
    assert acts(out) == [(Act.SET_HIGH, "l", Reason.ROOM_FOR_HIGHER, 488 * MiB)]
    assert "412 MiB kept" in out[0].detail


def test_the_room_is_shared_among_the_lower_calls():
    high = call("h", HIGH, 100 * MiB, 500 * MiB)
    a = call("a", LOW, 100 * MiB, 1000 * MiB)
    b = call("b", LOW, 100 * MiB, 1000 * MiB)
    # room = 1000 - 300 - 400 = 300, 150 each
    assert acts(decide(snap(high, a, b), T)) == [
        (Act.SET_HIGH, "a", Reason.ROOM_FOR_HIGHER, 250 * MiB),
        (Act.SET_HIGH, "b", Reason.ROOM_FOR_HIGHER, 250 * MiB),
    ]


def test_a_tripwire_already_low_enough_is_not_rewritten():
    high = call("h", HIGH, 100 * MiB, 512 * MiB)
    low = call("l", LOW, 300 * MiB, 400 * MiB, own=1000 * MiB)
    assert decide(snap(high, low), T) == []


def test_a_lower_call_whose_whole_ask_fits_keeps_or_gets_back_its_own_limits():
    high = call("h", HIGH, 100 * MiB, 200 * MiB)
    low = call("l", LOW, 100 * MiB, 300 * MiB)
    assert decide(snap(high, low), T) == []
    throttled = call("l", LOW, 100 * MiB, 150 * MiB, own=300 * MiB)
    assert acts(decide(snap(high, throttled), T)) == [
        (Act.SET_HIGH, "l", Reason.ROOM_BACK, 300 * MiB)
    ]


def test_a_lower_call_stuck_at_its_tripwire_with_room_gets_more():
    high = call("h", HIGH, 100 * MiB, 300 * MiB)
    low = call("l", LOW, 200 * MiB, 200 * MiB, own=1000 * MiB, stuck=True)
    # room = 1000 - 300 - 200 = 500
    assert acts(decide(snap(high, low), T)) == [(Act.SET_HIGH, "l", Reason.ROOM_BACK, 700 * MiB)]


def test_a_lower_call_stuck_without_room_is_frozen():
    high = call("h", HIGH, 100 * MiB, 512 * MiB)
    low = call("l", LOW, 480 * MiB, 480 * MiB, own=1000 * MiB, stuck=True)
    out = decide(snap(high, low), T)  # room = 1000 - 580 - 412 = 8 MiB < step
    assert acts(out) == [(Act.FREEZE, "l", Reason.ROOM_FOR_HIGHER, None)]
    assert "8.0 MiB of room" in out[0].detail


def test_a_frozen_call_is_thawed_with_a_tripwire_when_room_is_back():
    high = call("h", HIGH, 100 * MiB, 150 * MiB)  # HIGH shrank; claims 50
    low = call("l", LOW, 480 * MiB, 480 * MiB, own=1000 * MiB, frozen=True)
    # room = 1000 - 580 - 50 = 370, all of it for the one frozen call
    out = decide(snap(high, low), T)
    assert acts(out) == [
        (Act.SET_HIGH, "l", Reason.ROOM_BACK, 850 * MiB),
        (Act.THAW, "l", Reason.ROOM_BACK, None),
    ]


def test_a_frozen_call_stays_frozen_while_the_room_is_short():
    high = call("h", HIGH, 400 * MiB, 512 * MiB)
    low = call("l", LOW, 480 * MiB, 480 * MiB, own=1000 * MiB, frozen=True)
    assert decide(snap(high, low), T) == []


def test_once_nothing_ranks_above_a_call_it_is_thawed_and_restored():
    low = call("l", LOW, 480 * MiB, 480 * MiB, own=1000 * MiB, frozen=True)
    assert acts(decide(snap(low), T)) == [
        (Act.SET_HIGH, "l", Reason.RESTORED, 1000 * MiB),
        (Act.THAW, "l", Reason.RESTORED, None),
    ]


def test_top_rank_calls_are_never_throttled_or_frozen():
    high = call("h", HIGH, 900 * MiB, 950 * MiB)
    low = call("l", LOW, 90 * MiB, 100 * MiB, own=1000 * MiB, stuck=True)
    for a in decide(snap(high, low, at_limit=True), T):
        assert a.call == "l"


def test_without_a_budget_nobody_is_held_back():
    high = call("h", HIGH, 900 * MiB, 950 * MiB)
    low = call("l", LOW, 90 * MiB, 100 * MiB, own=1000 * MiB, frozen=True)
    assert acts(decide(snap(high, low, budget=None), T)) == [
        (Act.SET_HIGH, "l", Reason.RESTORED, 1000 * MiB),
        (Act.THAW, "l", Reason.RESTORED, None),
    ]


def test_frozen_higher_calls_claim_nothing():
    top = call("t", 30, 10 * MiB, 100 * MiB)
    mid = call("m", HIGH, 100 * MiB, 900 * MiB, frozen=True)
    low = call("l", LOW, 100 * MiB, 100 * MiB, own=1000 * MiB, stuck=True)
    # reserve = top's 90 only; room = 1000 - 210 - 90 = 700, shared by one mover
    out = acts(decide(snap(top, mid, low), T))
    assert (Act.SET_HIGH, "l", Reason.ROOM_BACK, 800 * MiB) in out


def test_unlimited_calls_without_an_ask_are_held_at_their_share_and_released_alone():
    high = call("h", HIGH, 100 * MiB, 500 * MiB)
    free = CallSnapshot("l", LOW, 100 * MiB, None, None, None, False, False)
    assert acts(decide(snap(high, free), T)) == [
        (Act.SET_HIGH, "l", Reason.ROOM_FOR_HIGHER, 500 * MiB)
    ]
    held = CallSnapshot("l", LOW, 100 * MiB, 500 * MiB, None, None, False, False)
    assert acts(decide(snap(held), T)) == [(Act.SET_HIGH, "l", Reason.RESTORED, None)]


# --- rule 3: at the budget --------------------------------------------------------------


def test_at_the_budget_the_daemon_neither_freezes_nor_kills():
    # The kernel's OOM killer acts within milliseconds, steered by oom_score_adj.
    high = call("h", HIGH, 500 * MiB, 512 * MiB)
    a = call("a", LOW, 300 * MiB, 300 * MiB, own=1000 * MiB)
    b = call("b", 10, 190 * MiB, 190 * MiB, own=1000 * MiB)
    assert decide(snap(high, a, b, at_limit=True), T) == []


def test_at_the_budget_a_frozen_call_is_not_thawed():
    high = call("h", HIGH, 100 * MiB, 150 * MiB)
    low = call("l", LOW, 480 * MiB, 480 * MiB, own=1000 * MiB, frozen=True)
    assert decide(snap(high, low, at_limit=True), T) == []


def test_the_decision_is_a_function_of_the_snapshot():
    s = snap(
        call("h", HIGH, 100 * MiB, 512 * MiB),
        call("l", LOW, 480 * MiB, 480 * MiB, own=1000 * MiB, stuck=True),
    )
    assert decide(s, T) == decide(s, T)


def test_config_tuning():
    cfg = MemoryConfig(step=8 * MiB, thaw_room=24 * MiB)
    assert cfg.tuning() == Tuning(step=8 * MiB, thaw_room=24 * MiB)
    growth = MemoryConfig(step=8 * MiB, thaw_room=24 * MiB, reserve="growth")
    assert growth.tuning() == Tuning(step=8 * MiB, thaw_room=24 * MiB, reserve_horizon_s=2.0)


# --- what is kept for higher calls: their whole ask, or their recent growth -----------

G = Tuning(step=16 * MiB, thaw_room=32 * MiB, reserve_horizon_s=2.0)


def grown(c: CallSnapshot, growth: int) -> CallSnapshot:
    return CallSnapshot(
        c.call, c.rank, c.usage, c.high, c.own_high, c.max, c.frozen, c.stuck, growth
    )


def test_an_idle_higher_call_keeps_one_step_not_its_whole_ask():
    # HIGH asked 600 MiB and sits at 100; LOW reaches its tripwire at 300 MiB.
    high = call("h", HIGH, 100 * MiB, 600 * MiB)
    low = call("l", LOW, 300 * MiB, 300 * MiB, own=None, stuck=True)
    # Kept for the whole ask: 1000 - 400 - 500 = 100 MiB of room.
    assert acts(decide(snap(high, low), T)) == [(Act.SET_HIGH, "l", Reason.ROOM_BACK, 400 * MiB)]
    # Kept for what HIGH needs now: one step, so LOW gets the rest.
    assert acts(decide(snap(high, low), G)) == [
        (Act.SET_HIGH, "l", Reason.ROOM_BACK, 300 * MiB + 584 * MiB)
    ]


def test_a_growing_higher_call_keeps_its_growth_over_the_horizon():
    low = call("l", LOW, 300 * MiB, 300 * MiB, own=None, stuck=True)
    # 100 MiB/s for 2 s: 200 MiB kept, 400 MiB of room left.
    high = grown(call("h", HIGH, 100 * MiB, 600 * MiB), 100 * MiB)
    assert acts(decide(snap(high, low), G)) == [(Act.SET_HIGH, "l", Reason.ROOM_BACK, 700 * MiB)]
    # Never more than its unused ask: growing 1 GiB/s, it keeps 500 MiB, as with "ask".
    fast = grown(call("h", HIGH, 100 * MiB, 600 * MiB), 1024 * MiB)
    assert decide(snap(fast, low), G) == decide(snap(fast, low), T)
    assert acts(decide(snap(fast, low), G)) == [(Act.SET_HIGH, "l", Reason.ROOM_BACK, 400 * MiB)]


def test_a_higher_call_not_yet_measured_keeps_its_whole_claim():
    high = grown(call("h", HIGH, 100 * MiB, 600 * MiB), None)  # type: ignore[arg-type]
    low = call("l", LOW, 300 * MiB, 300 * MiB, own=None, stuck=True)
    assert decide(snap(high, low), G) == decide(snap(high, low), T)


def test_a_frozen_lower_call_is_thawed_once_the_higher_one_stops_growing():
    low = call("l", LOW, 300 * MiB, 300 * MiB, own=None, frozen=True)
    growing = grown(call("h", HIGH, 400 * MiB, 800 * MiB), 200 * MiB)
    assert decide(snap(growing, low), G) == []
    idle = grown(call("h", HIGH, 400 * MiB, 800 * MiB), 0)
    assert [a.act for a in decide(snap(idle, low), G)] == [Act.SET_HIGH, Act.THAW]


def test_growth_is_measured_over_windows():
    from agentcg.daemon.escalation import GROWTH_WINDOW_S as W
    from agentcg.daemon.escalation import _Held

    held = _Held(None, None, seen=(0.0, 0))
    # Not measured before a whole window has been seen: its whole claim is kept.
    assert held.growth(0.002, 2 * MiB) is None
    assert held.growth(0.5 * W, 50 * MiB) is None
    # What a window grew counts as one window's growth, however long it was: 60 MiB
    # seen 5 windows after the start is not averaged away.
    assert held.growth(5 * W, 60 * MiB) == int(60 * MiB / W)
    # Flat afterwards: what the last windows showed halves per window, not at once.
    assert held.growth(5.5 * W, 60 * MiB) == int(60 * MiB / W)
    assert held.growth(6 * W, 60 * MiB) == int(30 * MiB / W)
    assert held.growth(7 * W, 60 * MiB) == int(15 * MiB / W)
    # Shrinking is not negative growth.
    assert held.growth(8 * W, 10 * MiB) == int(7.5 * MiB / W)
    # In a window just begun, 2 MiB is not 1 GiB/s.
    fresh = _Held(None, None, seen=(0.0, 0), measured=True)
    assert fresh.growth(0.002, 2 * MiB) == int(2 * MiB / W)
    # A recovered call is first looked at unmeasured.
    assert _Held(None, None).growth(5.0, 100 * MiB) is None


class _Leaf:
    def __init__(self, high: int | None) -> None:
        self.high = high

    def read_int(self, name: str) -> int | None:
        assert name == "memory.high"
        return self.high


def _first_look(ask: int | None, high: int | None):  # type: ignore[no-untyped-def]
    """What a restarted daemon makes of a recovered call's memory.high."""
    from types import SimpleNamespace

    from agentcg.daemon.escalation import Escalation

    leaf = _Leaf(high)
    reg = SimpleNamespace(call_cg=lambda call: leaf)
    call = SimpleNamespace(id="c1", limits=SimpleNamespace(memory_high=ask))
    return Escalation(reg)._first_look(call)  # type: ignore[arg-type]


def test_recovery_reads_an_ask_rounded_to_pages_as_the_ask():
    from agentcg.daemon.escalation import PAGE

    ask = 128 * MiB + 1000
    held = _first_look(ask, ask - ask % PAGE)
    assert (held.high, held.own, held.throttled) == (ask, ask, False)
    # A tripwire below it, or a limit raised above it, are what they are.
    trip = _first_look(ask, 64 * MiB)
    assert (trip.high, trip.own, trip.throttled) == (64 * MiB, ask, True)
    raised = _first_look(ask, None)
    assert (raised.high, raised.own) == (None, None)
    # Without an ask, a tripwire stays one, to be lifted.
    free = _first_look(None, 64 * MiB)
    assert (free.high, free.own) == (64 * MiB, None)


def test_a_session_without_a_planned_budget_is_bounded_by_its_cap():
    from agentcg.core.model import Session

    capped = Session("s", 0, None, None, None, None, 8, 0.0, limit=512 * MiB)
    assert capped.budget == 512 * MiB
    planned = Session("s", 0, None, 256 * MiB, None, None, 8, 0.0, limit=512 * MiB)
    assert planned.budget == 256 * MiB


def test_recheck_backs_off_while_nothing_changes_and_resets_on_change():
    ticks, previous = [], None
    for changed in (True, False, False, False, False, False, False, True, False):
        previous = next_recheck(previous, changed, 0.05, 1.0)
        ticks.append(previous)
    assert ticks == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 0.05, 0.1]
    # Never below the base, even when the cap is configured under it.
    assert next_recheck(0.05, False, 0.05, 0.0) == 0.05


# --- at rest: the daemon may skip reading memory.current --------------------------------


def _looks(calls: tuple[CallSnapshot, ...]) -> list[tuple[int, bool, int | None, int | None]]:
    return [(c.rank, c.frozen, c.high, c.own_high) for c in calls]


def test_at_rest_only_when_decide_has_nothing_to_do_whatever_the_usage():
    import itertools
    import random

    rng = random.Random(7)
    highs = [None, 64 * MiB, 128 * MiB]
    seen = {True: 0, False: 0}
    for _ in range(3000):
        calls = []
        for i in range(rng.randint(0, 3)):
            high = rng.choice(highs)
            own = rng.choice([high, high, *highs])
            calls.append(
                call(f"c{i}", rng.choice([LOW, HIGH]), 0, high, own=own, frozen=rng.random() < 0.2)
            )
        rest = at_rest(_looks(tuple(calls)), T)
        seen[rest] += 1
        if not rest:
            continue
        for usage, budget in itertools.product([0, 500 * MiB, 2000 * MiB], [None, 1000 * MiB]):
            scaled = tuple(
                CallSnapshot(c.call, c.rank, usage, c.high, c.own_high, c.max, c.frozen, False)
                for c in calls
            )
            assert decide(snap(*scaled, budget=budget), T) == []
    assert seen[True] > 100 and seen[False] > 100  # both sides exercised


def test_at_rest_holds_for_every_subset_of_calls_at_rest():
    # The daemon asks first with exited calls counted (no cgroupfs read) and skips the
    # session when that is at rest: it must then be at rest without them too.
    import itertools
    import random

    rng = random.Random(11)
    highs = [None, 64 * MiB, 128 * MiB]
    rested = 0
    for _ in range(2000):
        looks = []
        for _ in range(rng.randint(0, 4)):
            high = rng.choice(highs)
            own = rng.choice([high, high, *highs])
            looks.append((rng.choice([LOW, HIGH]), rng.random() < 0.1, high, own))
        if not at_rest(looks, T):
            continue
        rested += 1
        for n in range(len(looks)):
            for subset in itertools.combinations(looks, n):
                assert at_rest(list(subset), T), (looks, subset)
    assert rested > 100


def test_not_at_rest_with_two_ranks_a_frozen_or_throttled_call_or_growth_reserve():
    assert at_rest([], T)
    assert at_rest([(HIGH, False, 64 * MiB, 64 * MiB), (HIGH, False, None, None)], T)
    assert not at_rest([(HIGH, False, 64 * MiB, 64 * MiB), (LOW, False, None, None)], T)
    assert not at_rest([(HIGH, True, 64 * MiB, 64 * MiB)], T)
    assert not at_rest([(LOW, False, 32 * MiB, 64 * MiB)], T)  # a tripwire below its ask
    assert not at_rest([(LOW, False, 32 * MiB, None)], T)
    growth = Tuning(step=T.step, thaw_room=T.thaw_room, reserve_horizon_s=30.0)
    assert not at_rest([(HIGH, False, 64 * MiB, 64 * MiB)], growth)

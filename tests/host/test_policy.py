import dataclasses

import pytest

from agentcg.core.config import Config
from agentcg.core.errors import AgentcgError, LimitExceeded
from agentcg.core.intent import Intent, parse_intent, parse_size
from agentcg.core.policy import (
    CallLimits,
    Committed,
    Outcome,
    admission_blocker,
    advise,
    decide,
    format_size,
    retry_size,
    size_arg,
    suggested_memory,
)

KiB, MiB, GiB = 1024, 1024**2, 1024**3
CFG = Config.default()


def intent(**kw) -> Intent:
    return parse_intent(kw, CFG)


def outcome(**kw) -> Outcome:
    base = dict(
        call="c0123456789ab",
        label="tool",
        exit_status=0,
        signal=None,
        duration_s=2.0,
        peak_memory=100 * MiB,
        memory_requested=GiB,
        cpu_usage_us=1_000_000,
        cpu_throttled_us=0,
        memory_high_events=0,
        oom_kills=0,
        pressure_some_us=0,
        frozen=False,
        killed_reason=None,
    )
    base.update(kw)
    return Outcome(**base)


# --- sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (int(13.5 * MiB), "13.5 MiB"),
        (512 * MiB, "512 MiB"),
        (GiB - 1, "1.0 GiB"),  # rounds into the next unit rather than "1024 MiB"
        (int(1.9 * GiB), "1.9 GiB"),
        (100 * GiB, "100 GiB"),
        (2**50, "1.0 PiB"),
        (2**70, "1024 EiB"),
    ],
)
def test_format_size(n, text):
    assert format_size(n) == text


def test_format_size_rejects_negative():
    with pytest.raises(ValueError):
        format_size(-1)


@pytest.mark.parametrize(
    ("n", "arg"),
    [
        (GiB, "1G"),
        (int(2.5 * GiB), "2.5G"),
        (int(2.25 * GiB), "2.25G"),
        (768 * MiB, "768M"),
        (256 * MiB, "256M"),
        (MiB + 1, "2M"),
    ],
)
def test_size_arg_roundtrips_through_parse_size(n, arg):
    assert size_arg(n) == arg
    assert parse_size(arg) >= n


def test_retry_size():
    assert retry_size(int(1.9 * GiB)) == int(2.5 * GiB)
    assert retry_size(GiB) == int(1.25 * GiB)
    assert retry_size(1) == 256 * MiB
    assert retry_size(0) == 256 * MiB
    assert retry_size(100 * MiB, at_least=3 * GiB) == 3 * GiB
    for peak in range(1, 8 * GiB, 97 * MiB + 13):
        r = retry_size(peak)
        assert r % (256 * MiB) == 0 and r >= peak * 1.25 and r - peak * 1.25 < 256 * MiB


# --- decide ---------------------------------------------------------------------------


def test_decide_declared_class():
    lim = decide(intent(memory="medium"), CFG, None)
    assert lim == CallLimits(
        memory_high=GiB,
        memory_max=int(1.25 * GiB),
        memory_low=0,
        cpu_weight=100,
        cpu_max=None,
        pids_max=None,
        timeout_s=None,
    )


def test_decide_undeclared_uses_default_class():
    assert decide(intent(), CFG, None).memory_high == GiB


def test_decide_without_default_class_sets_no_memory_limits():
    cfg = dataclasses.replace(CFG, call=dataclasses.replace(CFG.call, default_memory_class=None))
    lim = decide(parse_intent({}, cfg), cfg, None)
    assert (lim.memory_high, lim.memory_max, lim.memory_low) == (None, None, 0)
    # ...but a session budget still caps memory.max
    lim = decide(parse_intent({}, cfg), cfg, 2 * GiB, Committed(asks=GiB))
    assert (lim.memory_high, lim.memory_max) == (None, 2 * GiB)


def test_memory_max_is_page_aligned_and_headroom_scaled():
    lim = decide(intent(memory=1000), CFG, None)
    assert lim.memory_high == 1000
    assert lim.memory_max == 4096
    lim = decide(intent(memory="3G"), CFG, None)
    assert lim.memory_max == int(3.75 * GiB)


@pytest.mark.parametrize(
    ("prio", "weight", "low"),
    [("critical", 1000, 2 * GiB), ("high", 400, GiB), ("normal", 100, 0), ("low", 25, 0)],
)
def test_priorities(prio, weight, low):
    lim = decide(intent(memory="2G", priority=prio), CFG, None)
    assert (lim.cpu_weight, lim.memory_low) == (weight, low)
    assert lim.memory_low % 4096 == 0


def test_latency_sensitive_doubles_weight_capped():
    assert decide(intent(latency_sensitive=True), CFG, None).cpu_weight == 200
    cfg = dataclasses.replace(
        CFG,
        priorities={
            **CFG.priorities,
            "normal": dataclasses.replace(CFG.priorities["normal"], cpu_weight=9000),
        },
    )
    assert decide(parse_intent({"latency_sensitive": True}, cfg), cfg, None).cpu_weight == 10000


@pytest.mark.parametrize(
    ("cpu", "quota"), [(1, 100_000), (0.5, 50_000), (2.5, 250_000), (0.001, 1000), (0.0001, 1000)]
)
def test_cpu_max(cpu, quota):
    assert decide(intent(cpu=cpu), CFG, None).cpu_max == (quota, 100_000)


def test_pids_and_timeout():
    lim = decide(intent(pids=64, timeout=30), CFG, None)
    assert (lim.pids_max, lim.timeout_s) == (64, 30.0)
    cfg = dataclasses.replace(CFG, call=dataclasses.replace(CFG.call, default_timeout_s=600.0))
    assert decide(parse_intent({}, cfg), cfg, None).timeout_s == 600.0
    assert decide(parse_intent({"timeout": 5}, cfg), cfg, None).timeout_s == 5.0


def test_budget_caps_memory_max_not_the_remaining_budget():
    lim = decide(intent(memory="2G"), CFG, 4 * GiB, Committed(asks=int(3.5 * GiB)))
    assert (lim.memory_high, lim.memory_max) == (2 * GiB, int(2.5 * GiB))
    lim = decide(intent(memory="2G"), CFG, 2 * GiB)
    assert (lim.memory_high, lim.memory_max) == (2 * GiB, 2 * GiB)


def test_asks_may_overcommit_the_budget_up_to_the_factor():
    # The case: three 512M asks on a 1300M budget all start.
    held = Committed()
    for _ in range(3):
        lim = decide(intent(memory="512M"), CFG, 1300 * MiB, held)
        held = Committed(held.asks + (lim.memory_high or 0), held.protected + lim.memory_low)
    assert held.asks == 1536 * MiB


def test_an_ask_past_the_overcommit_is_limit_exceeded_with_advice():
    with pytest.raises(LimitExceeded) as ei:
        decide(intent(memory="2G", label="pytest"), CFG, 4 * GiB, Committed(asks=7 * GiB))
    e = ei.value
    assert e.code == "limit_exceeded"
    assert e.message == (
        "pytest asks for 2.0 GiB but the session's running calls already ask for 7.0 GiB "
        "of the 8.0 GiB it may promise (2x its 4.0 GiB budget): wait for running calls to "
        "end, ask for --memory 1G or less, or open the session with a larger --memory."
    )


def test_an_ask_over_the_whole_budget_can_never_start():
    text = admission_blocker(intent(memory="5G", label="make"), CFG, 4 * GiB, Committed())
    assert text == (
        "make asks for 5.0 GiB but the session's whole memory budget is 4.0 GiB: "
        "ask for --memory 4G or less, or open the session with a larger --memory."
    )


def test_undeclared_call_shrinks_to_what_may_still_be_promised():
    # Its memory.high shrinks; its ceiling stays the default size's (1G x 1.25), within
    # the budget: the isolation bench's third tenant was killed at the 87 MiB the first
    # two had left it, although it fit the 300 MiB budget.
    lim = decide(intent(), CFG, GiB, Committed(asks=int(1.75 * GiB)))
    assert (lim.memory_high, lim.memory_max) == (256 * MiB, GiB)
    roomy = decide(intent(), CFG, 4 * GiB, Committed(asks=int(7.5 * GiB)))
    assert (roomy.memory_high, roomy.memory_max) == (512 * MiB, int(1.25 * GiB))


def test_exhausted_promise():
    for asks in (8 * GiB, 9 * GiB, 8 * GiB - 100):
        with pytest.raises(AgentcgError) as ei:
            decide(intent(), CFG, 4 * GiB, Committed(asks=asks))
        assert ei.value.code == "limit_exceeded"
        assert "--memory" in ei.value.message and "or less" not in ei.value.message


def test_exact_fit_is_allowed():
    lim = decide(intent(memory="1G"), CFG, 2 * GiB, Committed(asks=3 * GiB))
    assert lim.memory_max == int(1.25 * GiB)


def test_protected_amounts_must_fit_the_budget():
    # critical protects all of its ask: two 600M asks cannot both be protected in 1G.
    first = decide(intent(memory="600M", priority="critical"), CFG, GiB)
    assert first.memory_low == 600 * MiB and first.memory_min == 300 * MiB
    held = Committed(asks=600 * MiB, protected=first.memory_low)
    text = admission_blocker(intent(memory="600M", priority="critical"), CFG, GiB, held)
    assert text is not None and text.startswith(
        "tool would protect 600 MiB of memory (critical priority) but the session's running "
        "calls already protect 600 MiB of its 1.0 GiB budget"
    )
    # normal priority protects nothing, so it still starts
    assert admission_blocker(intent(memory="600M"), CFG, GiB, held) is None


def test_unknown_priority_from_another_config():
    stray = dataclasses.replace(intent(), priority="batch")
    with pytest.raises(AgentcgError):
        decide(stray, CFG, None)


# --- advise ---------------------------------------------------------------------------


def run(label="tool", memory="1G", **kw):
    i = intent(label=label, memory=memory, **{k: kw.pop(k) for k in ("cpu", "timeout") if k in kw})
    lim = decide(i, CFG, None)
    return advise(outcome(label=label, memory_requested=lim.memory_high, **kw), lim, i)


def test_contract_example():
    text = run(
        "pytest",
        peak_memory=int(1.9 * GiB),
        killed_reason="oom",
        oom_kills=1,
        signal=9,
        exit_status=None,
    )
    assert text == (
        "pytest used 1.9 GiB of its 1.0 GiB ask and was OOM-killed: run a narrower test "
        "selection (e.g. one test file or -k EXPR) or ask for --memory 2.5G."
    )


@pytest.mark.parametrize(
    ("label", "hint"),
    [
        ("pytest", "narrower test selection"),
        ("unit-tests", "narrower test selection"),
        ("tox", "narrower test selection"),
        ("pip", "fewer parallel jobs (install one package at a time"),
        ("pip-install", "fewer parallel jobs"),
        ("npm", "fewer parallel jobs"),
        ("cargo", "cargo build -j 2"),
        ("make", "make -j2"),
        ("build", "fewer parallel jobs"),
        ("python", "narrower command"),
        ("tool", "narrower command"),
    ],
)
def test_oom_hint_by_label(label, hint):
    text = run(label, peak_memory=GiB + GiB // 4, killed_reason="oom", oom_kills=1)
    assert hint in text
    assert text.startswith(f"{label} used 1.2 GiB of its 1.0 GiB ask and was OOM-killed: ")


def test_oom_suggestion_always_exceeds_the_ask():
    # memory.peak of an OOM-killed call can be just under memory.max; ask must still grow.
    text = run("tool", memory="4G", peak_memory=10 * MiB, killed_reason="oom", oom_kills=1)
    assert text.endswith("or ask for --memory 4.25G.")


def test_oom_with_class_name():
    text = run("pytest", memory="low", peak_memory=300 * MiB, killed_reason="oom", oom_kills=1)
    assert "of its low (256 MiB) ask" in text
    assert text.endswith("--memory 512M.")


def test_partial_oom_kill_without_call_kill():
    text = run("make", peak_memory=GiB, oom_kills=2, exit_status=2)
    assert text.startswith("make used 1.0 GiB of its 1.0 GiB ask and had 2 processes OOM-killed")
    assert "output may be incomplete" in text and "make -j2" in text


def test_oom_under_budget_cap_mentions_the_session():
    i = intent(memory="2G", label="pytest")
    lim = decide(i, CFG, 2 * GiB)
    text = advise(
        outcome(
            label="pytest",
            peak_memory=2 * GiB,
            killed_reason="oom",
            oom_kills=1,
            memory_requested=2 * GiB,
        ),
        lim,
        i,
    )
    assert "The session's memory budget capped this call at 2.0 GiB" in text


def test_timeout():
    text = run("pytest", timeout=60, killed_reason="timeout", duration_s=60.0)
    assert text == (
        "pytest was killed after reaching its 60 s timeout: run a narrower test selection "
        "(e.g. one test file or -k EXPR) or ask for --timeout 120."
    )
    assert "split the work" in run("cargo", timeout=1.5, killed_reason="timeout")
    assert "--timeout 3" in run("cargo", timeout=1.5, killed_reason="timeout")


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("disconnect", "the connection that began it closed before call.end"),
        ("session_closed", "its session was closed"),
        ("admin", "killed by an administrator"),
    ],
)
def test_other_kills(reason, words):
    assert words in run(killed_reason=reason)


def test_memory_throttling_only_when_it_cost_time():
    quiet = run("pytest", memory_high_events=3, pressure_some_us=50_000, peak_memory=GiB)
    assert quiet is None
    text = run(
        "pytest",
        memory_high_events=40,
        pressure_some_us=900_000,
        duration_s=3.0,
        peak_memory=GiB + 100 * MiB,
    )
    assert text == (
        "pytest was slowed by memory reclaim for 0.9 s of 3.0 s at its 1.0 GiB ask "
        "(peak 1.1 GiB); ask for --memory 1.5G to run faster."
    )


def test_cpu_throttling():
    text = run("cargo", cpu=1, cpu_throttled_us=5_000_000, duration_s=10.0)
    assert text == (
        "cargo was CPU-throttled for 5.0 s of 10.0 s at its 1-core limit; ask for --cpu 2 if "
        "it is on the critical path."
    )
    assert run("cargo", cpu=1, cpu_throttled_us=1_000_000, duration_s=10.0) is None
    assert run("cargo", cpu_throttled_us=5_000_000, duration_s=10.0) is None  # no cpu.max
    assert run("cargo", cpu=1, cpu_throttled_us=400_000, duration_s=0.5) is None  # too short


def test_frozen():
    assert "paused while the host was short of memory" in run(frozen=True)
    assert "paused" not in run(frozen=True, killed_reason="oom", peak_memory=GiB, oom_kills=1)


def test_over_ask():
    text = run("git", memory="4G", peak_memory=20 * MiB)
    assert text == (
        "git peaked at 20.0 MiB of its 4.0 GiB ask; --memory 256M would be enough and leaves "
        "room for other agents."
    )
    assert run("git", memory="4G", peak_memory=2 * GiB) is None
    assert run("git", memory="256M", peak_memory=MiB) is None  # small asks are fine
    assert run("git", memory="1G", peak_memory=MiB) is None  # saving under 1 GiB: not worth it


def test_undeclared_call_is_not_told_it_over_asked():
    i = intent(label="git")
    lim = decide(i, CFG, None)
    assert (
        advise(outcome(label="git", peak_memory=MiB, memory_requested=lim.memory_high), lim, i)
        is None
    )


def test_clean_run_has_no_advice():
    assert run(peak_memory=900 * MiB) is None


def test_outcome_to_dict():
    o = outcome(advice="x")
    d = o.to_dict()
    assert d["call"] == "c0123456789ab" and d["advice"] == "x" and len(d) == 17
    assert d["suggested_memory"] is None and d["sched"] is None
    assert CallLimits(1, 2, 0, 100, (1000, 100000), None, None).to_dict()["cpu_max"] == (
        1000,
        100000,
    )


def test_advice_is_one_line():
    for kw in [
        dict(killed_reason="oom", oom_kills=1, peak_memory=GiB),
        dict(frozen=True, memory_high_events=5, pressure_some_us=10**7, duration_s=20.0),
    ]:
        text = run("pytest", **kw)
        assert text and "\n" not in text


def test_suggested_memory_after_oom_is_above_the_old_ask():
    limits = CallLimits(256 * MiB, 320 * MiB, 0, 100, None, None, None)
    o = outcome(killed_reason="oom", oom_kills=1, peak_memory=320 * MiB, memory_requested=256 * MiB)
    sugg = suggested_memory(o, limits)
    assert sugg is not None and sugg > 320 * MiB and sugg % (256 * MiB) == 0
    assert suggested_memory(outcome(), limits) is None


def test_a_pressure_kill_is_not_advised_as_an_oom_of_its_own():
    # The session's OOM killed the call's processes (oom_kills > 0): room, not a bigger ask.
    o = outcome(killed_reason="pressure", oom_kills=2, peak_memory=161 * MiB)
    lim = CallLimits(200 * MiB, 250 * MiB, 0, 25, None, None, None)
    text = advise(o, lim, intent(label="build"))
    assert text is not None and "lowest-priority" in text and "OOM-killed" not in text
    assert suggested_memory(o, lim) is None


def test_pressure_kill_advice():
    o = outcome(killed_reason="pressure", peak_memory=300 * MiB, frozen=True)
    text = advise(o, CallLimits(GiB, GiB, 0, 100, None, None, None), intent(label="pytest"))
    assert text is not None and text.startswith("tool was paused and then killed when")
    assert "lowest-priority" in text and "--memory" in text

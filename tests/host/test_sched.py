"""Pure scheduler decisions (agentcg.core.sched) and the [sched] config section."""

import dataclasses

import pytest

from agentcg.cli.render import summary
from agentcg.core.config import load_config
from agentcg.core.errors import ConfigError
from agentcg.core.intent import parse_intent
from agentcg.core.metrics import DaemonStats
from agentcg.core.policy import decide
from agentcg.core.sched import (
    STABLE_S,
    SchedClass,
    SchedConfig,
    call_sched,
    failures_after_stop,
    knobs,
    needs_policy,
    reload_delay,
    runs_on_ext,
)


def _sched(cfg, **intent):
    return call_sched(parse_intent(intent, cfg), cfg)


@pytest.mark.parametrize(
    ("priority", "latency", "klass", "slice_us"),
    [
        ("low", False, SchedClass.BATCH, 20_000),
        ("low", True, SchedClass.NORMAL, 10_000),
        ("normal", False, SchedClass.NORMAL, 10_000),
        ("normal", True, SchedClass.LATENCY, 2_000),
        ("high", False, SchedClass.NORMAL, 10_000),
        ("critical", True, SchedClass.LATENCY, 2_000),
    ],
)
def test_class_from_priority_and_latency(priority, latency, klass, slice_us):
    cfg = load_config(overrides={})
    got = _sched(cfg, priority=priority, latency_sensitive=latency)
    assert got.klass is klass
    assert got.slice_ns == slice_us * 1000


def test_class_is_relative_to_the_default_priority():
    # With "high" as the default, "normal" is below it: batch work.
    cfg = load_config(overrides={"call.default_priority": "high"})
    assert _sched(cfg, priority="normal").klass is SchedClass.BATCH
    assert _sched(cfg).klass is SchedClass.NORMAL


def test_slices_come_from_config():
    cfg = load_config(overrides={"sched.latency_slice_us": 500, "sched.batch_slice_us": 50_000})
    assert _sched(cfg, latency_sensitive=True).slice_ns == 500_000
    assert _sched(cfg, priority="low").slice_ns == 50_000_000


def test_knobs():
    k = knobs(SchedConfig(slice_us=5000))
    assert (k.slice_ns, k.wake_credit_ns, k.latency_credit_ns) == (5_000_000, 5_000_000, 20_000_000)


def test_cpu_capped_calls_stay_on_the_fair_class():
    cfg = load_config(overrides={})
    sc = cfg.sched
    free = decide(parse_intent({}, cfg), cfg, None)
    capped = decide(parse_intent({"cpu": 0.5}, cfg), cfg, None)
    assert runs_on_ext(free, None, sc) and needs_policy(free, None, sc)
    assert not runs_on_ext(capped, None, sc)  # cpu.max is enforced by the fair class only
    assert not runs_on_ext(free, 2.0, sc)  # the session is capped
    assert not needs_policy(capped, None, sc) and not needs_policy(free, 2.0, sc)
    assert not runs_on_ext(free, None, dataclasses.replace(sc, enabled=False))
    # switch_all: every task is the scheduler's, capped or not, without SCHED_EXT.
    every = dataclasses.replace(sc, switch_all=True)
    assert runs_on_ext(capped, 2.0, every) and not needs_policy(free, None, every)


def test_reload_backoff_doubles_up_to_the_cap():
    sc = SchedConfig(reload_backoff_s=1.0, reload_backoff_max_s=10.0)
    assert [reload_delay(n, sc) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert reload_delay(0, sc) == 1.0


def test_a_scheduler_that_ran_long_enough_resets_the_backoff():
    assert failures_after_stop(5, STABLE_S) == 1
    assert failures_after_stop(5, STABLE_S - 1) == 6
    assert failures_after_stop(0, 0.5) == 1


@pytest.mark.parametrize(
    ("key", "value", "msg"),
    [
        ("sched.enabled", "yes", "sched.enabled must be true or false"),
        ("sched.switch_all", 1, "sched.switch_all must be true or false"),
        ("sched.slice_us", 10, "sched.slice_us must be between 100 and 1000000"),
        ("sched.reload_backoff_s", 0, "sched.reload_backoff_s must be greater than 0"),
        ("sched.nope", 1, "unknown key sched.nope"),
    ],
)
def test_bad_sched_config(key, value, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(overrides={key: value})


def test_sched_config_defaults():
    sc = load_config(overrides={}).sched
    assert sc.enabled and not sc.switch_all
    assert load_config(overrides={"sched.enabled": False}).sched.enabled is False


def test_status_line_says_what_the_scheduler_does():
    s = DaemonStats()
    s.set_sched_ext("disabled", agentcg="fallback: stopped after 3 s (scheduler error)")
    snap = s.snapshot([], everything=True, version="0", open_sessions=0, calls_running=0)
    line = summary(snap)
    assert "sched_ext: disabled (agentcg: fallback: stopped after 3 s (scheduler error))" in line

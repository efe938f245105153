"""The daemon's counters behind the `stats` op: bounded labels, histograms, scope."""

import pytest

from agentcg.core.config import MetricsConfig
from agentcg.core.errors import ConfigError
from agentcg.core.metrics import (
    ACTIONS,
    DEFAULT_TOOL_KINDS,
    OUTCOMES,
    DaemonStats,
    Histogram,
    call_outcome,
    sees_everything,
    tool_kind,
)
from agentcg.core.policy import Outcome
from tests.host.test_config import load

MiB = 1024**2


def outcome(call="c1", label="pytest", exit_status=0, peak=MiB, asked=MiB, **kw) -> Outcome:
    fields = {
        "call": call,
        "label": label,
        "exit_status": exit_status,
        "signal": None,
        "duration_s": 1.0,
        "peak_memory": peak,
        "memory_requested": asked,
        "cpu_usage_us": 0,
        "cpu_throttled_us": 0,
        "memory_high_events": 0,
        "oom_kills": 0,
        "pressure_some_us": 0,
        "frozen": False,
        "killed_reason": None,
    }
    return Outcome(**{**fields, **kw})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stats(kinds=("pytest", "git")) -> tuple[DaemonStats, Clock]:
    mono = Clock()
    return DaemonStats(kinds, clock=lambda: 1.7e9, monotonic=mono), mono


def test_histogram_buckets_are_upper_bounds():
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 2.0, 3.0, 100.0):
        h.observe(v)
    # le=1 holds 0.5 and 1.0; le=2 holds 1.5 and 2.0; +Inf the rest
    assert h.counts == [2, 2, 2]
    assert h.sum == pytest.approx(108.0)
    assert h.to_dict() == {"le": [1.0, 2.0], "counts": [2, 2, 2], "sum": 108.0}


def test_tool_kind_is_bounded_by_config():
    assert tool_kind("pytest", {"pytest"}) == "pytest"
    assert tool_kind("my-random-label-42", {"pytest"}) == "other"


def test_call_outcome():
    assert call_outcome(None, 0, None) == "ok"
    assert call_outcome(None, 2, None) == "failed"
    assert call_outcome(None, None, 9) == "failed"
    assert call_outcome(None, None, None) == "unknown"
    assert call_outcome("oom", None, 9) == "oom"
    assert call_outcome("something-new", None, None) == "admin"
    # Every kill reason is also an outcome, so the two families line up.
    assert set(ACTIONS["kill"]) <= set(OUTCOMES)


def test_unknown_labels_fold_into_other_and_calls_are_counted():
    s, _ = stats()
    s.session_opened("a")
    s.call_started("a")
    s.call_started("a")
    s.call_ended("a", outcome("c1", "pytest", 0, 300 * MiB, 256 * MiB, duration_s=1.2))
    s.call_ended("a", outcome("c2", "agent-label", None, 64 * MiB, None, killed_reason="oom"))
    assert sorted(s.tools) == ["other", "pytest"]
    py = s.tools["pytest"]
    assert sum(py.duration_seconds.counts) == 1
    assert py.memory_ask_ratio.sum == pytest.approx(300 / 256)
    assert sum(s.tools["other"].memory_ask_ratio.counts) == 0  # no ask, no ratio
    assert s.calls_started == 2
    assert s.calls_finished["ok"] == 1 and s.calls_finished["oom"] == 1
    assert s.sessions["a"].calls_finished == {"ok": 1, "oom": 1}


def test_scheduler_waits_are_observed_for_calls_on_agentcgs_scheduler():
    s, _ = stats()
    s.session_opened("a")
    sched = {"run_us": 900, "wait_us": 3_000, "max_wait_us": 2_000, "dispatches": 4, "preempts": 1}
    s.call_ended("a", outcome("c1", "pytest", sched=sched))
    s.call_ended("a", outcome("c2", "pytest"))  # on the fair class: no figures
    py = s.tools["pytest"]
    assert sum(py.sched_wait_seconds.counts) == 1 and py.sched_wait_seconds.sum == 0.003
    assert py.sched_max_wait_seconds.sum == 0.002
    assert sum(py.duration_seconds.counts) == 2


def test_actions_need_a_known_reason():
    s, mono = stats()
    s.session_opened("a")
    with pytest.raises(ValueError):
        s.action("a", "kill", "because")
    with pytest.raises(ValueError):
        s.observe_latency("dance", mono.now)
    s.action("a", "freeze", "room_for_higher", call="c1")
    s.observe_latency("freeze", mono.now - 0.004)
    assert s.actions[("freeze", "room_for_higher")] == 1
    assert s.actions[("kill", "oom")] == 0  # every known pair exists from the start
    assert sum(s.latency["freeze"].counts) == 1
    assert s.latency["freeze"].sum == pytest.approx(0.004)
    assert "throttle" not in s.latency
    assert [a["action"] for a in s.recent_actions()] == ["freeze"]


def test_throttle_counts_the_increase_and_the_rest_at_the_end():
    s, _ = stats()
    s.session_opened("a")
    s.throttled("a", "c1", 5)  # pushes are rate-limited: each says the total so far
    s.throttled("a", "c1", 5)
    s.throttled("a", "c1", 12)
    assert s.actions[("throttle", "call_memory_high")] == 12
    s.call_ended("a", outcome("c1", memory_high_events=20))
    assert s.actions[("throttle", "call_memory_high")] == 20
    assert s.sessions["a"].actions[("throttle", "call_memory_high")] == 20
    s.call_ended("a", outcome("c2", memory_high_events=3))  # never pushed at all
    assert s.actions[("throttle", "call_memory_high")] == 23
    assert s._high_seen == {}


def test_an_oom_kill_counts_once_whether_or_not_its_event_came_first():
    s, _ = stats()
    s.session_opened("a")
    s.oom_killed("a", "c1")  # the kernel's memory.events "oom_kill" seen while running
    s.call_ended("a", outcome("c1", exit_status=None, killed_reason="oom", oom_kills=2))
    s.call_ended("a", outcome("c2", exit_status=None, killed_reason="oom", oom_kills=1))
    assert s.actions[("kill", "oom")] == 2
    assert s.calls_finished["oom"] == 2
    assert s._oom_seen == set()


def test_closed_sessions_disappear():
    s, _ = stats()
    s.session_opened("a")
    s.action("a", "kill", "timeout")
    s.session_closed("a")
    assert "a" not in s.sessions
    snap = s.snapshot(
        [{"session": "a"}], everything=True, version="v", open_sessions=0, calls_running=0
    )
    assert snap["sessions"][0]["counters"] == {
        "calls_started": 0,
        "calls_finished": {},
        "actions": [],
    }
    # The daemon-wide count stays: it is not per session.
    assert {"action": "kill", "reason": "timeout", "count": 1} in snap["daemon"]["actions"]


def test_snapshot_scope():
    s, _ = stats()
    for name in ("mine", "theirs"):
        s.session_opened(name)
        s.action(name, "kill", "pressure")
    s.call_ended("mine", outcome("c1", "git"))
    s.set_bpf_program("memwatch", kind="tracepoint", attached=True, counters={"events": 3})
    s.set_sched_ext("enabled", ops="agentcg")
    own = s.snapshot(
        [{"session": "mine"}], everything=False, version="v", open_sessions=2, calls_running=0
    )
    assert own["scope"] == "own"
    assert "daemon" not in own and "tools" not in own
    assert [a["session"] for a in own["recent_actions"]] == ["mine"]
    assert own["sessions"][0]["counters"]["actions"] == [
        {"action": "kill", "reason": "pressure", "count": 1}
    ]
    full = s.snapshot(
        [{"session": "mine"}, {"session": "theirs"}],
        everything=True,
        version="v",
        open_sessions=2,
        calls_running=0,
    )
    assert full["scope"] == "all"
    assert full["daemon"]["sessions"] == 2
    assert full["daemon"]["bpf"] == [
        {"name": "memwatch", "kind": "tracepoint", "attached": True, "counters": {"events": 3}}
    ]
    assert full["daemon"]["sched_ext"]["ops"] == "agentcg"
    assert list(full["tools"]) == ["git"]
    assert len(full["recent_actions"]) == 2


def test_metrics_readers():
    common = {"uid": 998, "gid": 998, "reader_uids": (998,), "reader_gids": ()}
    assert sees_everything(admin=False, confined=False, **common)
    # The same uid inside a container or a session is an agent.
    assert not sees_everything(admin=False, confined=True, **common)
    assert not sees_everything(admin=False, confined=False, **{**common, "uid": 1000})
    assert sees_everything(admin=True, confined=False, **{**common, "uid": 0})


def test_metrics_config(tmp_path):
    assert load(tmp_path, "").metrics == MetricsConfig(DEFAULT_TOOL_KINDS, (), ())
    c = load(tmp_path, '[metrics]\ntool_kinds = ["pytest"]\nreader_gids = [990]\n')
    assert c.metrics == MetricsConfig(("pytest",), (), (990,))
    for bad, says in [
        ('tool_kinds = ["other"]', 'without "other"'),
        ('tool_kinds = ["Py"]', "metrics.tool_kinds[0]"),
        ('tool_kinds = "pytest"', "a list of at most 64"),
        ("reader_uids = [-1]", "metrics.reader_uids[0]"),
    ]:
        with pytest.raises(ConfigError) as ei:
            load(tmp_path, f"[metrics]\n{bad}\n")
        assert says in ei.value.message

"""The exporter: a stats snapshot becomes valid Prometheus exposition, per scrape."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentcg.client.stats import fetch_stats
from agentcg.core.errors import AgentcgError
from agentcg.core.metrics import DaemonStats
from agentcg.exporter.families import families
from agentcg.exporter.serve import parse_listen, registry_for
from tests.host.test_metrics import outcome

MiB = 1024**2


def sample_snapshot() -> dict[str, Any]:
    s = DaemonStats(("pytest",), clock=lambda: 1.7e9, monotonic=lambda: 50.0)
    s.session_opened("task-1")
    s.call_started("task-1")
    s.call_started("task-1")
    s.call_ended(
        "task-1",
        outcome(
            "c1", "pytest", 0, 300 * MiB, 256 * MiB, duration_s=2.0, sched={"max_wait_us": 700}
        ),
    )
    s.call_ended(
        "task-1", outcome("c2", "c0ffee-not-a-kind", None, 64 * MiB, 32 * MiB, killed_reason="oom")
    )
    s.action("task-1", "freeze", "room_for_higher", call="c0123456789ab")
    s.observe_latency("freeze", 49.99)
    s.action("task-1", "kill", "pressure", call="c0123456789ab")
    s.request("call.begin", None)
    s.request("call.end", "not_found")
    s.clients = 3
    s.set_bpf_program("memwatch", kind="tracepoint", attached=True, counters={"reclaim": 5})
    s.set_sched_ext("disabled")
    session = {
        "session": "task-1",
        "owner_uid": 1000,
        "container": None,
        "memory": 1024 * MiB,
        "usage": {
            "memory_current": 200 * MiB,
            "memory_peak": 900 * MiB,
            "pids_current": 3,
            "cpu_usage_s": 12.5,
            "pressure": {
                "memory": {"some": 0.25, "full": 0.125},
                "cpu": {"some": 1.5, "full": 0.0},
            },
        },
        "calls": [{"call": "c0123456789ab", "label": "pytest", "state": "running"}],
    }
    return s.snapshot(
        [session], everything=True, version="agentcg 0.1.0", open_sessions=1, calls_running=1
    )


def scrape(snap: Any) -> str:
    def fetch() -> Any:
        if isinstance(snap, Exception):
            raise snap
        return snap

    return generate_latest(registry_for(fetch)).decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def test_exposition_values_and_units():
    text = scrape(sample_snapshot())
    assert value(text, "agentcg_up") == 1
    assert value(text, "agentcg_session_memory_bytes", session="task-1") == 200 * MiB
    assert value(text, "agentcg_session_memory_budget_bytes", session="task-1") == 1024 * MiB
    assert value(text, "agentcg_session_cpu_seconds_total", session="task-1") == 12.5
    assert (
        value(
            text,
            "agentcg_session_pressure_stall_seconds_total",
            session="task-1",
            resource="memory",
            kind="full",
        )
        == 0.125
    )
    assert value(text, "agentcg_session_calls_running", session="task-1") == 1
    assert value(text, "agentcg_session_calls_started_total", session="task-1") == 2
    assert value(text, "agentcg_session_calls_finished_total", session="task-1", outcome="oom") == 1
    assert (
        value(
            text,
            "agentcg_session_actions_total",
            session="task-1",
            action="kill",
            reason="pressure",
        )
        == 1
    )
    assert value(text, "agentcg_session_info", session="task-1", uid="1000", container="") == 1
    assert value(text, "agentcg_clients_connected") == 3
    assert value(text, "agentcg_requests_total", op="call.end") == 1
    assert value(text, "agentcg_request_errors_total", op="call.end", code="not_found") == 1
    assert value(text, "agentcg_actions_total", action="thaw", reason="room_back") == 0
    assert value(text, "agentcg_bpf_program_attached", program="memwatch", kind="tracepoint") == 1
    assert value(text, "agentcg_bpf_program_events_total", program="memwatch", event="reclaim") == 5
    assert value(text, "agentcg_sched_ext_enabled") == 0
    assert value(text, "agentcg_build_info", version="agentcg 0.1.0") == 1


@pytest.mark.parametrize(
    ("kernel", "ops", "agentcg", "enabled"),
    [
        ("enabled", "agentcg", "running", 1),
        # Another scheduler holds sched_ext: the kernel says enabled, agentcg's is not.
        ("enabled", "rusty", "fallback: cannot load: another sched_ext scheduler", 0),
        ("enabled", "rusty", "sched.enabled is false", 0),
        ("disabled", None, "loading", 0),
        ("unsupported", None, "unsupported: this kernel has no sched_ext", 0),
    ],
)
def test_sched_ext_enabled_is_agentcgs_own_scheduler(kernel, ops, agentcg, enabled):
    s = DaemonStats()
    s.set_sched_ext(kernel, ops=ops, agentcg=agentcg)
    snap = s.snapshot([], everything=True, version="0", open_sessions=0, calls_running=0)
    text = scrape(snap)
    assert value(text, "agentcg_sched_ext_enabled") == enabled
    assert value(text, "agentcg_sched_ext_info", state=kernel, ops=ops or "") == 1


def test_histograms_are_cumulative_and_bounded_by_tool_kind():
    text = scrape(sample_snapshot())
    tools = {
        dict(labels)["tool"]
        for (name, labels) in samples(text)
        if name.startswith("agentcg_tool_call_")
    }
    assert tools == {"pytest", "other"}
    assert value(text, "agentcg_tool_call_duration_seconds_bucket", tool="pytest", le="1.0") == 0
    assert value(text, "agentcg_tool_call_duration_seconds_bucket", tool="pytest", le="2.5") == 1
    assert value(text, "agentcg_tool_call_duration_seconds_bucket", tool="pytest", le="+Inf") == 1
    assert value(text, "agentcg_tool_call_duration_seconds_count", tool="pytest") == 1
    le = "0.001"
    assert value(text, "agentcg_tool_call_sched_max_wait_seconds_bucket", tool="pytest", le=le) == 1
    assert value(text, "agentcg_tool_call_sched_wait_seconds_count", tool="other") == 0
    assert value(text, "agentcg_tool_call_memory_ask_ratio_sum", tool="other") == 2.0
    assert value(text, "agentcg_detection_to_action_seconds_count", action="freeze") == 1


def test_no_call_ids_or_pids_in_labels():
    text = scrape(sample_snapshot())
    for _name, labels in samples(text):
        for key, v in labels:
            assert key not in ("call", "pid")
            assert "c0123456789ab" not in v and "c0ffee" not in v


def test_own_scope_has_only_session_families():
    snap = sample_snapshot()
    for key in ("daemon", "tools"):
        del snap[key]
    names = {name for name, _ in samples(scrape(snap))}
    assert "agentcg_session_memory_bytes" in names
    assert not any(n.startswith(("agentcg_requests", "agentcg_tool_call")) for n in names)


def test_daemon_down_is_up_zero_only():
    text = scrape(AgentcgError("unavailable", "cannot reach the agentcg daemon"))
    assert {name for name, _ in samples(text)} == {
        "agentcg_up",
        "agentcg_exporter_scrape_duration_seconds",
    }
    assert value(text, "agentcg_up") == 0


def test_every_family_has_help_and_a_base_unit_name():
    fams = list(families(sample_snapshot()))
    for fam in fams:
        assert fam.name.startswith("agentcg_") and fam.documentation
        assert not any(bad in fam.name for bad in ("_ms", "_us", "_kb", "_mb", "milli", "micro"))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_check_metrics():
    proc = subprocess.run(
        ["promtool", "check", "metrics"],
        input=scrape(sample_snapshot()),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("listen", "expect"),
    [
        ("127.0.0.1:9745", ("127.0.0.1", 9745)),
        ("[::1]:9745", ("::1", 9745)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_listen(listen, expect):
    assert parse_listen(listen) == expect


@pytest.mark.parametrize("listen", ["9745", ":9745", "host:", "host:0", "host:70000", "::1:9745"])
def test_parse_listen_rejects(listen):
    with pytest.raises(ValueError, match=r"HOST:PORT|brackets"):
        parse_listen(listen)


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A socket that answers hello and stats the way the daemon does."""
    path = str(tmp_path / "agentcg.sock")
    seen: list[dict[str, Any]] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    req = json.loads(line)
                    seen.append(req)
                    if req["op"] == "hello":
                        # An event before the answer must be skipped by the client.
                        f.write(b'{"event":"ended","call":"c0","data":{}}\n')
                        result: Any = {"version": 1}
                    elif req["args"].get("session") == "nope":
                        f.write(
                            b'{"id":2,"ok":false,"error":{"code":"not_found","message":"no"}}\n'
                        )
                        f.flush()
                        continue
                    else:
                        result = sample_snapshot()
                    f.write(
                        json.dumps({"id": req["id"], "ok": True, "result": result}).encode() + b"\n"
                    )
                    f.flush()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path, seen
    srv.close()


def test_fetch_stats_one_connection_per_read(fake_daemon):
    path, seen = fake_daemon
    snap = fetch_stats(path, timeout=5)
    assert snap["scope"] == "all"
    assert [r["op"] for r in seen] == ["hello", "stats"]
    with pytest.raises(AgentcgError) as ei:
        fetch_stats(path, session="nope", timeout=5)
    assert ei.value.code == "not_found"
    assert seen[-1]["args"] == {"session": "nope"}


def test_fetch_stats_without_daemon_says_what_to_do(tmp_path):
    with pytest.raises(AgentcgError) as ei:
        fetch_stats(str(tmp_path / "absent.sock"), timeout=1)
    assert ei.value.code == "unavailable"
    assert "agentcg daemon" in ei.value.message


def test_docs_list_every_metric_and_only_those():
    text = (Path(__file__).resolve().parents[2] / "docs/metrics.md").read_text()
    documented = set(re.findall(r"^\| `(agentcg_\w+)`", text, re.MULTILINE))
    served = {
        fam.name + ("_total" if fam.type == "counter" else "")
        for fam in text_string_to_metric_families(scrape(sample_snapshot()))
    }
    assert served == documented

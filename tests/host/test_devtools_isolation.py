"""`agentcg bench isolation`'s pure parts: reading traces, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentcg.devtools.isolation_report import render, summarize, trace_name
from agentcg.devtools.traces import TraceError, load_trace, parse_trace, parse_usage, target_at

TRACES = Path(__file__).resolve().parent.parent / "data" / "traces"


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("186MB / 134.5GB", 186_000_000),
        ("11.71MB / 134.5GB", 11_710_000),
        ("2.646MB / 1GB", 2_646_000),
        ("1.5GiB / 2GiB", 1.5 * 1024**3),
        ("512kB / 1GB", 512_000),
        ("900B / 1GB", 900),
    ],
)
def test_parse_usage(text, n):
    assert parse_usage(text) == n


@pytest.mark.parametrize("text", ["", "lots / 1GB", "12 parsecs / 1GB"])
def test_parse_usage_rejects(text):
    with pytest.raises(TraceError):
        parse_usage(text)


def test_parse_trace_sorts_and_rebases_time():
    data = {
        "samples": [
            {"epoch": 102.0, "mem_usage": "300MB / 1GB"},
            {"epoch": 100.0, "mem_usage": "100MB / 1GB"},
            {"epoch": 101.0, "mem_usage": "200MB / 1GB"},
        ]
    }
    t = parse_trace("task", data)
    assert t.times == (0.0, 1.0, 2.0) and t.usage == (100e6, 200e6, 300e6)
    assert (t.duration, t.peak) == (2.0, 300e6)
    fast = t.scaled(50, 0.5)
    assert fast.times == (0.0, 0.02, 0.04) and fast.usage == (50e6, 100e6, 150e6)
    assert [target_at(t, x) for x in (0.0, 0.5, 1.0, 1.9, 5.0)] == [
        100e6,
        100e6,
        200e6,
        200e6,
        300e6,
    ]


@pytest.mark.parametrize(
    "data", [{}, {"samples": []}, {"samples": [{"epoch": 1}]}, {"samples": [{"mem_usage": "1MB"}]}]
)
def test_parse_trace_rejects(data):
    with pytest.raises(TraceError):
        parse_trace("bad", data)


def test_the_recorded_traces_load():
    t = load_trace(TRACES / "RDFLib__rdflib-1117")
    assert t.name == "RDFLib__rdflib-1117" and 60 < t.duration < 70
    assert 250e6 < t.peak < 270e6


def test_load_trace_from_a_file(tmp_path):
    d = tmp_path / "task-1"
    d.mkdir()
    (d / "resources.json").write_text(json.dumps({"samples": [{"epoch": 5, "mem_usage": "1MB"}]}))
    assert load_trace(d).name == "task-1"
    assert load_trace(d / "resources.json").usage == (1_000_000,)
    assert trace_name(str(d / "resources.json")) == "task-1"
    with pytest.raises(TraceError):
        load_trace(tmp_path / "missing")


def tenant(role, survived, lat, done=1.0, why=None, **kw):
    t = {"role": role, "trace": f"{role}-trace", "survived": survived, "latencies_ms": lat}
    t.update(completion_s=done if survived else None, why=why, **kw)
    return t


def test_summary_and_text():
    report = {
        "plan": {
            "traces": ["a/resources.json", "b"],
            "budget": 1100e6,
            "speed": 50,
            "scale": 1.0,
            "chunk": 4 << 20,
            "high_ask": None,
            "bpf": True,
        },
        "runs": [
            {
                "none": [
                    tenant("high", False, [1.0, 2.0], why="OOM-killed"),
                    tenant("low", True, [1.0]),
                ],
                "agentcg": [
                    tenant("high", True, [1.0, 1.0, 3.0], done=2.0),
                    tenant("low", True, [5.0], done=4.0, freezes=1, throttles=1),
                ],
            }
        ],
    }
    s = summarize(report)
    assert s["none"]["survived"] == 1 and s["none"]["high_survived"] == 0
    assert s["none"]["lost"] == ["high high-trace: OOM-killed"]
    assert s["agentcg"]["survived"] == 2 and s["agentcg"]["high_completion_s"] == 2.0
    assert s["agentcg"]["high_latency_ms"] == {"p50": 1.0, "p95": 2.8, "p99": 2.96}
    assert (s["agentcg"]["freezes"], s["agentcg"]["throttles"]) == (1, 1)
    text = render(report, s)
    assert "HIGH first: a, b" in text and "lost high high-trace: OOM-killed" in text
    assert "agentcg HIGH p95 allocation latency vs none: +43.6%" in text

"""Pure parts of the benches: statistics, ratios and the text report."""

import json

import pytest

from agentcg.devtools.bench import REFERENCE_NOTE, format_report, overhead_ms, ratios
from agentcg.devtools.benchstats import percentile, ratio, summarize


def test_percentile_matches_linear_interpolation():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 25) == 2.0
    assert percentile(values, 90) == pytest.approx(4.6)  # rank 3.6 between 4 and 5


def test_percentile_of_hundred_values():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)


def test_percentile_single_value_and_errors():
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_in_ms_and_calls_per_second():
    s = summarize([0.010] * 99 + [0.110])
    assert s["n"] == 100
    assert s["p50_ms"] == 10.0
    assert s["max_ms"] == 110.0
    assert s["p99_ms"] == pytest.approx(11.0)  # rank 98.01: 1% of the way to 110 ms
    assert s["calls_per_s"] == pytest.approx(100 / 1.1, rel=1e-3)


def stats(none: float, raw: float, agentcg: float) -> dict:
    return {
        name: {"p50_ms": v, "p95_ms": v * 1.5, "p99_ms": v * 2, "calls_per_s": 1000 / v}
        for name, v in (("none", none), ("raw", raw), ("agentcg", agentcg))
    }


def test_ratios_and_overhead():
    st = stats(1.0, 4.0, 6.0)
    r = ratios(st)
    assert r == {
        "agentcg/raw": {"p50": 1.5, "p99": 1.5},
        "agentcg/none": {"p50": 6.0, "p99": 6.0},
        "raw/none": {"p50": 4.0, "p99": 4.0},
    }
    assert overhead_ms(st) == {"p50": 2.0, "p99": 4.0}
    assert ratio(1.0, 0.0) is None
    assert overhead_ms({"raw": st["raw"]}) is None


def test_ratios_skip_missing_variants():
    st = stats(1.0, 4.0, 6.0)
    del st["none"]
    assert list(ratios(st)) == ["agentcg/raw"]


def report(**extra) -> dict:
    st = stats(1.0, 4.0, 6.0)
    rep = {
        "calls": 100,
        "warmup": 10,
        "tool": ["/bin/true"],
        "environment": {"kernel": "7.3.4+deb13-amd64", "cpus": 2, "python": "3.11.2"},
        "daemon": "own (started for this run)",
        "variants": st,
        "ratios": ratios(st),
        "overhead_over_raw_ms": overhead_ms(st),
        "throughput": None,
    }
    rep.update(extra)
    return rep


def test_format_report_table():
    text = format_report(report())
    lines = text.splitlines()
    assert lines[0].startswith("agentcg bench toolcall: 100 calls per variant (+10 warm-up)")
    assert "kernel 7.3.4+deb13-amd64, 2 CPUs" in lines[1]
    row = next(line for line in lines if line.startswith("agentcg (SDK via daemon)"))
    assert row.split()[-4:] == ["6.00", "9.00", "12.00", "166.7"]
    assert any(line.split() == ["agentcg/raw", "1.50x", "1.50x"] for line in lines)
    assert any(line.split() == ["raw/none", "4.00x", "4.00x"] for line in lines)
    assert "agentcg overhead over raw: +2.00 ms at p50, +4.00 ms at p99" in text
    assert lines[-1] == REFERENCE_NOTE
    assert "1-4 ms" in REFERENCE_NOTE and "ratios" in REFERENCE_NOTE
    assert "throughput" not in text


def test_format_report_throughput_and_missing_ratio():
    rep = report(
        throughput={
            "clients": 4,
            "calls": 100,
            "calls_per_s": {"none": 40.0, "raw": 20.0, "agentcg": 10.0},
            "ratios": {"agentcg/raw": 0.5, "agentcg/none": None, "raw/none": 0.5},
        }
    )
    rep["ratios"]["agentcg/none"]["p99"] = None
    text = format_report(rep)
    assert "throughput, 4 concurrent clients (100 calls each):" in text
    assert any(line.split()[-1] == "n/a" for line in text.splitlines() if "agentcg/none" in line)
    json.dumps(rep)  # the report stays JSON-able


def test_format_report_daemon_cpu_per_call():
    assert "daemon CPU" not in format_report(report())
    rep = report()
    rep["daemon_cpu_ms_per_call"] = 41.25
    assert "daemon CPU per agentcg call: 41.25 ms" in format_report(rep)

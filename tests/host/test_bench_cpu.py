"""The `agentcg bench cpu` report, from made-up rounds."""

from agentcg.devtools.bench_cpu import HOGS, _scenario, format_report


def _round(variant: str, late: float, runq: float, rate: float) -> dict:
    sched = {"wait_us": 50, "dispatches": 10, "preempts": 9} if variant == "agentcg" else None
    return {
        "variant": variant,
        "late_us": [late] * 99 + [late * 10],
        "runq_us": [runq] * 99 + [runq * 10],
        "hog_rate": rate,
        "sched": sched,
    }


def test_scenario_pools_rounds_per_variant() -> None:
    runs = [
        _round("fair", 1000, 400, 1_000_000),
        _round("agentcg", 1000, 200, 900_000),
        _round("agentcg", 1000, 200, 1_000_000),
        _round("fair", 1000, 400, 1_000_000),
    ]
    sc = _scenario(runs)
    assert sc["latency"]["fair"]["n"] == 200
    assert sc["runqueue"]["fair"]["p50_ms"] == 0.4
    assert sc["runqueue"]["agentcg"]["p50_ms"] == 0.2
    assert sc["hog_iterations_per_s"] == {"fair": 1_000_000, "agentcg": 950_000}
    assert sc["agentcg_probe_runqueue"] == {"wait_us": 100, "dispatches": 20, "preempts": 18}
    assert sc["ratios"]["hog_throughput_agentcg_over_fair"] == 0.95
    # fair's run-queue waits are twice agentcg's, sample for sample
    assert sc["ratios"]["runq_p99_fair_over_agentcg"] == 2.0


def test_report_text() -> None:
    sc = _scenario([_round("fair", 1000, 400, 1_000_000), _round("agentcg", 500, 100, 950_000)])
    report = {
        "rounds": 1,
        "samples_per_round": 100,
        "hogs": 4,
        "hog_intents": HOGS,
        "environment": {"kernel": "7.3.4"},
        "scenarios": {"low": sc, "equal": sc},
        "weights": {
            v: {"shares": {100: 0.166, 200: 0.334, 300: 0.5}, "max_deviation_points": 0.07}
            for v in ("fair", "agentcg")
        },
    }
    text = format_report(report)
    assert "1 rounds x 100 wake-ups per variant and kind of hogs, 4 hogs" in text
    assert "low hogs (low priority)" in text and "equal hogs (high priority)" in text
    assert "agentcg        0.50" in text and "950,000" in text
    assert "agentcg/fair 0.95" in text
    assert "  agentcg  0.166 0.334 0.500   0.07" in text

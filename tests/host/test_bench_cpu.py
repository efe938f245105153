"""The `agentcg bench cpu` report, from a made-up run."""

from agentcg.devtools.bench_cpu import format_report


def test_report_text() -> None:
    lat = {"n": 300, "p50_ms": 1.0, "p95_ms": 4.0, "p99_ms": 9.5}
    report = {
        "rounds": 3,
        "samples_per_round": 100,
        "hogs": 4,
        "environment": {"kernel": "7.3.4"},
        "latency": {"fair": {**lat, "p99_ms": 19.0}, "agentcg": lat},
        "hog_iterations_per_s": {"fair": 1_000_000, "agentcg": 950_000},
        "ratios": {
            "p99_fair_over_agentcg": 2.0,
            "p50_fair_over_agentcg": 1.0,
            "hog_throughput_agentcg_over_fair": 0.95,
        },
        "weights": {
            v: {"shares": {100: 0.166, 200: 0.334, 300: 0.5}, "max_deviation_points": 0.07}
            for v in ("fair", "agentcg")
        },
    }
    text = format_report(report)
    assert "3 rounds x 100 wake-ups per variant, 4 low-priority hogs" in text
    assert "fair            1.00      4.00     19.00     1,000,000" in text
    assert "p99 fair/agentcg 2.0x" in text and "agentcg/fair 0.95" in text
    assert "  agentcg  0.166 0.334 0.500   0.07" in text

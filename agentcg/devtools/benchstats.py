"""What every `agentcg bench` shares: percentiles, ratios, the interleaved runner, the
concurrent-clients throughput runner and the environment a report records."""

from __future__ import annotations

import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks.

    Same definition as numpy's default ("linear"): rank = q/100 * (n - 1).
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, not {q!r}")
    s = sorted(values)
    rank = q / 100 * (len(s) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def summarize(samples_s: Sequence[float]) -> dict[str, float | int]:
    """Latency summary of one variant from per-call durations in seconds."""
    total = sum(samples_s)
    return {
        "n": len(samples_s),
        "p50_ms": round(percentile(samples_s, 50) * 1e3, 3),
        "p95_ms": round(percentile(samples_s, 95) * 1e3, 3),
        "p99_ms": round(percentile(samples_s, 99) * 1e3, 3),
        "mean_ms": round(total / len(samples_s) * 1e3, 3),
        "min_ms": round(min(samples_s) * 1e3, 3),
        "max_ms": round(max(samples_s) * 1e3, 3),
        # Sequential calls back to back: calls/s of one agent issuing them one by one.
        "calls_per_s": round(len(samples_s) / total, 2) if total > 0 else 0.0,
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def interleaved(
    runners: dict[str, Callable[[], object]], calls: int, warmup: int
) -> dict[str, list[float]]:
    """Per-run durations (s) of each runner, `calls` each after `warmup` unrecorded rounds,
    round-robin with the order rotated every round so no variant always goes first."""
    names = list(runners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + calls):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            runners[name]()
            dt = time.perf_counter() - t0
            if i >= warmup:
                samples[name].append(dt)
    return samples


def environment() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "in_test_vm": os.environ.get("AGENTCG_IN_VM") == "1",
    }


def progress(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def concurrent(runners: Sequence[Callable[[], object]], per_client: int) -> float:
    """Run `per_client` calls in each runner's own thread, all at once; wall seconds."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(runners) + 1)

    def work(run: Callable[[], object]) -> None:
        barrier.wait()
        try:
            for _ in range(per_client):
                run()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed


def measure_throughput(
    make_runner: dict[str, Callable[[], Callable[[], object]]], clients: int, calls: int
) -> dict[str, float]:
    """calls/s with `clients` threads, each with its own runner, doing `calls` calls each.

    Two alternating rounds of half the calls each, so drift hits every variant alike.
    """
    elapsed = dict.fromkeys(make_runner, 0.0)
    done = dict.fromkeys(make_runner, 0)
    halves = [calls // 2, calls - calls // 2]
    for rnd, per_client in enumerate(halves):
        order = list(make_runner) if rnd % 2 == 0 else list(reversed(make_runner))
        for name in order:
            runners = [make_runner[name]() for _ in range(clients)]
            try:
                elapsed[name] += concurrent(runners, per_client)
            finally:
                for r in runners:
                    close = getattr(r, "close", None)
                    if close:
                        close()
            done[name] += clients * per_client
    return {n: round(done[n] / elapsed[n], 2) if elapsed[n] > 0 else 0.0 for n in make_runner}

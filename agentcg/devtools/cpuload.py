"""CPU workloads for the scheduler's kernel tests and `agentcg bench cpu`.

A worker is a forked child that puts itself into a cgroup, optionally pins itself to
CPUs and switches to SCHED_EXT, then runs a body and sends its result back through a
pipe as JSON. Bodies: ``hog`` burns CPU counting loop iterations until SIGTERM (its throughput);
``probe`` sleeps a fixed period over and over and records how late each wake-up was
(the time from its timer firing to it running again, plus constant interpreter cost)
and how much of that it spent in a run queue.
Forking (no exec) keeps start-up cheap under emulation.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentcg.kernel.cgroup import Cgroup

SCHED_EXT = 7
READY = b"R"  # sent once the worker is in its cgroup, pinned and on its policy
Body = Callable[[], Any]


@dataclass
class Worker:
    pid: int
    _fd: int

    def result(self, timeout_s: float = 120.0) -> Any:
        """Wait for the body's result (then the process exits)."""
        chunks = []
        deadline = time.monotonic() + timeout_s
        while chunk := os.read(self._fd, 65536):
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.pid} did not finish")
        os.close(self._fd)
        os.waitpid(self.pid, 0)
        if not chunks:
            raise RuntimeError(f"worker {self.pid} died without a result")
        return json.loads(b"".join(chunks))

    def stop(self) -> Any:
        """SIGTERM, then the result (a hog's iteration count)."""
        os.kill(self.pid, signal.SIGTERM)
        return self.result()


def start(cg: Cgroup, body: Body, *, ext: bool, cpus: set[int] | None = None) -> Worker:
    """Fork a worker; returns once it is in place and about to run ``body``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 1
        try:
            os.close(r)
            cg.add_process(os.getpid())
            if cpus is not None:
                os.sched_setaffinity(0, cpus)
            if ext:
                os.sched_setscheduler(0, SCHED_EXT, os.sched_param(0))
            os.write(w, READY)
            os.write(w, json.dumps(body()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    if os.read(r, 1) != READY:
        os.close(r)
        os.waitpid(pid, 0)
        raise RuntimeError(f"worker {pid} failed to set itself up in {cg.path}")
    return Worker(pid, r)


def hog() -> tuple[int, float]:
    """Count loop iterations until SIGTERM: (iterations, seconds it ran for)."""
    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    n = 0
    while not stop:
        n += 1
    return n, time.monotonic() - t0


def probe(samples: int, period_s: float, delay_s: float = 0.0) -> Body:
    """A body that, after delay_s, sleeps period_s ``samples`` times and returns, in
    microseconds, how late each wake-up was (``late_us``) and how long of that it
    waited in a run queue (``runq_us``: the kernel's run_delay from
    /proc/self/schedstat, the scheduler's part without the timer's and the
    interpreter's)."""

    def body() -> dict[str, list[float]]:
        time.sleep(delay_s)
        late, runq = [], []
        period_ns = int(period_s * 1e9)
        fd = os.open("/proc/self/schedstat", os.O_RDONLY)
        try:
            for _ in range(samples):
                q0 = int(os.pread(fd, 128, 0).split()[1])
                t0 = time.monotonic_ns()
                time.sleep(period_s)
                t1 = time.monotonic_ns()
                q1 = int(os.pread(fd, 128, 0).split()[1])
                late.append((t1 - t0 - period_ns) / 1000)
                runq.append((q1 - q0) / 1000)
        finally:
            os.close(fd)
        return {"late_us": late, "runq_us": runq}

    return body


def cpu_usage_us(cg: Cgroup) -> int:
    return cg.cpu_stat().get("usage_usec", 0)


def shares(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Each cgroup's fraction of the CPU time all of them used between two readings."""
    used = {k: after[k] - before[k] for k in before}
    total = sum(used.values()) or 1
    return {k: v / total for k, v in used.items()}

"""`agentcg bench isolation`: 1 HIGH + N LOW tenants replaying real agent memory traces
under one session budget, with each strategy side by side in one run:

- ``none``: no isolation, the shared cap only: every tenant in its own child of one
  cgroup whose memory.max is the budget; the kernel's OOM killer picks its victim;
- ``static``: static per-tenant caps: each child gets memory.max = budget / tenants;
- ``agentcg``: a real daemon: one session with the budget, the HIGH tenant a call with
  ``priority high`` and its memory ask, the LOW tenants calls with ``priority low`` and
  no ask;
- ``agentcg-growth`` (only when asked for): the same with a second daemon whose
  ``memory.reserve`` is ``"growth"``: LOW is held back only while HIGH grows.

Tenants are real processes (agentcg.devtools.tenant) that allocate and touch memory
as their trace says, timing every allocation. Per tenant the report gives survival
(and why not), completion time, allocation latency p50/p95/p99, and the throttle,
freeze and kill counts; agentcg.devtools.isolation_report renders it and the charts.
Needs root and cgroup v2 with the memory controller.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentcg.devtools.daemonproc import PACKAGE_PARENT, DaemonProcess
from agentcg.devtools.isolation_report import trace_name
from agentcg.devtools.traces import load_trace
from agentcg.kernel.cgroup import Cgroup, find_cgroup2_mount

STRATEGIES = ("none", "static", "agentcg", "agentcg-growth")
DEFAULT_STRATEGIES = STRATEGIES[:3]
RESERVE = {"agentcg": "ask", "agentcg-growth": "growth"}  # each daemon's memory.reserve
START_DELAY_S = 1.0  # "go" is sent for t0 this far ahead, so every tenant starts at t0
# A tenant the strategy holds back before it is ready (a LOW frozen during start-up)
# is released at t0 like the others: it starts late, and its completion counts from t0.
READY_TIMEOUT_S = 120.0
SAMPLE_S = 0.1  # memory.current of every tenant is sampled this often
DAEMON_CONFIG = '[memory]\nbpf = {bpf}\nreserve = "{reserve}"\n'


@dataclass(frozen=True)
class Plan:
    traces: tuple[Path, ...]  # the first is the HIGH tenant's
    budget: int  # bytes
    speed: float
    scale: float  # trace usage times this
    chunk: int  # bytes per allocation
    high_ask: int | None  # the HIGH call's memory ask under agentcg (None: its peak)
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    runs: int = 1
    bpf: bool = True  # the agentcg daemon's memory.bpf


@dataclass
class Tenant:
    index: int
    role: str  # "high" | "low"
    trace: str
    proc: subprocess.Popen[str]
    cgroup: Path
    series: list[tuple[float, int]] = field(default_factory=list)  # (s since t0, bytes)
    result: dict[str, Any] = field(default_factory=dict)


def tenant_argv(plan: Plan, trace: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agentcg.devtools.tenant",
        str(trace),
        "--speed",
        f"{plan.speed:g}",
        "--scale",
        f"{plan.scale:g}",
        "--chunk",
        str(plan.chunk),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH")) if p
    )
    return env


class RawStrategy:
    """``none`` and ``static``: our own cgroups, no daemon."""

    def __init__(self, name: str, plan: Plan, tag: str) -> None:
        mount = find_cgroup2_mount()
        if mount is None:
            raise RuntimeError("no cgroup v2 mount: run `agentcg doctor`")
        self.name, self.plan = name, plan
        self.parent = Cgroup(mount / f"agentcg-bench-iso-{tag}-{name}")
        root = Cgroup(mount)
        if "memory" not in root.subtree_control():
            root.enable_controllers(["memory"])
        self.parent.create()
        self.parent.enable_controllers(["memory"])
        self.parent.set_memory_max(plan.budget)

    def spawn(self, i: int, role: str, trace: Path) -> Tenant:
        leaf = self.parent.child(f"t{i}").create()
        if self.name == "static":
            leaf.set_memory_max(self.plan.budget // len(self.plan.traces))
            leaf.write("memory.oom.group", 1)
        procs = str(leaf.path / "cgroup.procs")

        def enter() -> None:  # between fork and exec: raw syscalls only
            fd = os.open(procs, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)

        proc = subprocess.Popen(
            tenant_argv(self.plan, trace),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=enter,
            env=_env(),
        )
        return Tenant(i, role, trace_name(str(trace)), proc, leaf.path)

    def finish(self, t: Tenant) -> None:
        ev = Cgroup(t.cgroup).memory_events()
        t.result["high_events"] = ev.get("high", 0)
        t.result.update(throttles=0, freezes=0, kills=0)
        if ev.get("oom_kill", 0):
            where = "its own cap" if self.name == "static" else "the shared cap"
            t.result["why"] = f"OOM-killed by the kernel at {where}"

    def cleanup(self) -> None:
        self.parent.remove_tree(kill=True, timeout=30)


class AgentcgStrategy:
    """The tenants as tool calls of one session of a real daemon."""

    def __init__(self, plan: Plan, daemon: DaemonProcess, run: int) -> None:
        from agentcg.client import Client

        self.plan = plan
        os.environ["AGENTCG_SOCKET"] = str(daemon.socket)
        self.client = Client()
        name = f"iso-{run}-{secrets.token_hex(3)}"
        self.session = self.client.open_session(name, memory=plan.budget)
        self.calls: dict[int, Any] = {}

    def spawn(self, i: int, role: str, trace: Path) -> Tenant:
        intent: dict[str, Any] = {"priority": role, "label": f"tenant-{role}"}
        if role == "high":
            intent["memory"] = self.plan.high_ask or int(load_trace(trace).peak * self.plan.scale)
        call = self.client.tool_call(session=self.session, **intent)
        proc = call.popen(
            tenant_argv(self.plan, trace),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self.calls[i] = call
        return Tenant(i, role, trace_name(str(trace)), proc, Path(call.info["cgroup"]))

    def finish(self, t: Tenant) -> None:
        call = self.calls[t.index]
        outcome = call.end(t.proc.returncode)
        names = [e["event"] for e in call.events]
        t.result.update(
            high_events=outcome["memory_high_events"],
            throttles=names.count("throttled") + names.count("limit_raised"),
            freezes=names.count("frozen"),
            kills=names.count("killed") + names.count("oom"),
            events=[{"event": e["event"], **e.get("data", {})} for e in call.events],
        )
        if outcome["killed_reason"]:
            t.result["why"] = f"killed by agentcg ({outcome['killed_reason']})"

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close_session(self.session)
        self.client.close()


def _sample(tenants: list[Tenant], t0: float, stop: threading.Event) -> None:
    while not stop.wait(SAMPLE_S):
        now = time.monotonic() - t0
        for t in tenants:
            with contextlib.suppress(OSError, ValueError):
                t.series.append((round(now, 3), int((t.cgroup / "memory.current").read_text())))


def run_strategy(strategy: RawStrategy | AgentcgStrategy, plan: Plan) -> list[Tenant]:
    """Start every tenant, release them together, wait for all, collect results."""
    tenants = []
    try:
        for i, trace in enumerate(plan.traces):
            tenants.append(strategy.spawn(i, "high" if i == 0 else "low", trace))
        _wait_ready(tenants, READY_TIMEOUT_S)
        t0_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        for t in tenants:
            assert t.proc.stdin is not None
            t.proc.stdin.write(f"go {t0_ns}\n")
            t.proc.stdin.flush()
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(tenants, t0_ns / 1e9, stop))
        sampler.start()
        for t in tenants:
            out, _ = t.proc.communicate()
            line = out.strip().splitlines()[-1] if out.strip() else ""
            t.result = json.loads(line) if t.proc.returncode == 0 and line else {}
            t.result["exit"] = t.proc.returncode
        stop.set()
        sampler.join()
        for t in tenants:
            strategy.finish(t)
            t.result["survived"] = t.proc.returncode == 0 and "completion_s" in t.result
            if not t.result["survived"]:
                t.result.setdefault("why", f"exited {t.proc.returncode}")
    finally:
        for t in tenants:
            if t.proc.poll() is None:
                t.proc.kill()
                t.proc.wait()
        strategy.cleanup()
    return tenants


def _wait_ready(tenants: list[Tenant], timeout: float) -> None:
    """Wait until every tenant says "ready", or until ``timeout``: one the strategy
    froze before it got there is not waited for (it reads its "go" when thawed). One
    that says anything else failed to start."""
    waiting = {t.proc.stdout.fileno(): t for t in tenants if t.proc.stdout is not None}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for fd in waiting:
            sel.register(fd, selectors.EVENT_READ)
        while waiting and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                t = waiting.pop(key.fd)
                sel.unregister(key.fd)
                assert t.proc.stdout is not None
                line = t.proc.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"tenant {t.index} ({t.trace}) did not start: {line!r}")
    for t in waiting.values():
        print(
            f"bench isolation: tenant {t.index} ({t.trace}) not ready after {timeout:g} s "
            "(held back by the strategy?): released with the others",
            file=sys.stderr,
            flush=True,
        )


def _wait_log(d: DaemonProcess, line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while line not in d.log_tail(1_000_000):
        if time.monotonic() > deadline or d.proc is None or d.proc.poll() is not None:
            raise RuntimeError(f"the daemon did not start:\n{d.log_tail()}")
        time.sleep(1)


def start_daemon(
    work_dir: Path, bpf: bool, log: Callable[[str], None], reserve: str = "ask"
) -> DaemonProcess:
    """A daemon for an agentcg strategy; with BPF, once its probe is loaded."""
    config = DAEMON_CONFIG.format(bpf=str(bpf).lower(), reserve=reserve)
    d = DaemonProcess(f"bench-iso-{reserve}", work_dir, config)
    try:
        d.start()
    except RuntimeError:
        # A loaded emulated machine can take minutes just to import the daemon.
        if d.proc is None or d.proc.poll() is not None:
            raise
        log("the daemon is slow to start; waiting for it")
        _wait_log(d, f"listening on {d.socket}", 1800)
    if bpf:
        log("waiting for the daemon's BPF probe to compile and load (minutes under emulation)")
        deadline = time.monotonic() + 1800
        while "memory detection: bpf" not in d.log_tail(100_000):
            if "memory detection: staying on events" in d.log_tail(100_000):
                raise RuntimeError(f"the daemon could not load its BPF probe:\n{d.log_tail()}")
            if time.monotonic() > deadline or d.proc is None or d.proc.poll() is not None:
                raise RuntimeError(f"the daemon's BPF probe did not load:\n{d.log_tail()}")
            time.sleep(1)
    return d


def isolation(
    plan: Plan, daemons: dict[str, DaemonProcess], log: Callable[[str], None]
) -> dict[str, Any]:
    """Run the plan (``daemons``: the agentcg strategies' by name); a JSON-able report
    (isolation_report renders it)."""
    tag = secrets.token_hex(3)
    runs: list[dict[str, list[dict[str, Any]]]] = []
    for r in range(plan.runs):
        k = r % len(plan.strategies)  # rotate the order run by run
        order = plan.strategies[k:] + plan.strategies[:k]
        run: dict[str, list[dict[str, Any]]] = {}
        for name in order:
            log(f"{plan.speed:g}x run {r + 1}/{plan.runs}: {name}")
            if name in RESERVE:
                if name not in daemons:
                    raise RuntimeError(f"the {name} strategy needs a daemon")
                strategy: RawStrategy | AgentcgStrategy = AgentcgStrategy(plan, daemons[name], r)
            else:
                strategy = RawStrategy(name, plan, f"{tag}-{r}")
            tenants = run_strategy(strategy, plan)
            run[name] = [
                {"tenant": t.index, "role": t.role, "trace": t.trace, "series": t.series} | t.result
                for t in tenants
            ]
        runs.append(run)
    return {
        "plan": {
            "traces": [str(p) for p in plan.traces],
            "budget": plan.budget,
            "speed": plan.speed,
            "scale": plan.scale,
            "chunk": plan.chunk,
            "high_ask": plan.high_ask,
            "bpf": plan.bpf,
        },
        "runs": runs,
    }

"""`agentcg bench toolcall`: what one tool call costs through agentcg, side by side.

Variants run interleaved round-robin (the order rotates every round), so machine
noise (and, in the test VM, software emulation) hits all of them alike:

- ``none``: no isolation, ``subprocess.run(["/bin/true"])`` (the bare process cost);
- ``raw``: the same cgroup work done directly from Python: mkdir a leaf, write
  memory.high + memory.max, spawn the tool with a preexec_fn that writes its pid into
  the leaf's cgroup.procs, wait, rmdir;
- ``agentcg``: the real daemon over its socket with the SDK,
  ``with client.tool_call(...) as call: call.run([...])`` (begin, attach, exec, end,
  outcome).

Absolute milliseconds depend on the machine (the test VM is 10-50x slower than bare
metal), so the report leads with ratios measured in the same run.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agentcg.devtools.benchstats import (
    environment,
    interleaved,
    measure_throughput,
    progress,
    ratio,
    summarize,
)

TOOL = ["/bin/true"]
MEMORY_HIGH = 256 * 1024**2  # the agentcg variant asks for memory="256M"
MEMORY_MAX = MEMORY_HIGH * 5 // 4  # the daemon's default call.memory_headroom of 1.25
LABEL = "bench"
# The BPF program whose loading (or giving up) `stats` reports last at start-up.
SETTLE_PROGRAM = "memwatch"
SETTLE_TIMEOUT_S = 900.0

VARIANTS = ("none", "raw", "agentcg")
VARIANT_TITLES = {
    "none": "no isolation (fork+exec+wait)",
    "raw": "raw kernel (mkdir..rmdir)",
    "agentcg": "agentcg (SDK via daemon)",
}
RATIOS = (("agentcg", "raw"), ("agentcg", "none"), ("raw", "none"))
REFERENCE_NOTE = (
    "reference: the prototype's bash wrapper cost 1-4 ms per call (cgroup create + "
    "cleanup) on bare metal; compare ratios, not absolute ms, across machines."
)


# ----------------------------------------------------------------------------- report


def ratios(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """{"agentcg/raw": {"p50": x, "p99": y}, ...} for the pairs in RATIOS present in stats."""
    out: dict[str, dict[str, float | None]] = {}
    for a, b in RATIOS:
        if a in stats and b in stats:
            out[f"{a}/{b}"] = {
                q: ratio(stats[a][f"{q}_ms"], stats[b][f"{q}_ms"]) for q in ("p50", "p99")
            }
    return out


def overhead_ms(stats: dict[str, dict[str, Any]], over: str = "raw") -> dict[str, float] | None:
    """How many ms agentcg adds over `over`, at p50 and p99."""
    if "agentcg" not in stats or over not in stats:
        return None
    return {
        q: round(stats["agentcg"][f"{q}_ms"] - stats[over][f"{q}_ms"], 3) for q in ("p50", "p99")
    }


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _fmt_ms(x: float) -> str:
    return f"{x:+.1f} ms" if abs(x) >= 10 else f"{x:+.2f} ms"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report (the `text` key) from the JSON-able report dict."""
    stats: dict[str, dict[str, Any]] = report["variants"]
    env = report.get("environment", {})
    lines = [
        f"agentcg bench toolcall: {report['calls']} calls per variant "
        f"(+{report.get('warmup', 0)} warm-up), interleaved round-robin, "
        f"tool {' '.join(report.get('tool', TOOL))}",
    ]
    if env:
        lines.append(
            f"kernel {env.get('kernel', '?')}, {env.get('cpus', '?')} CPUs, "
            f"python {env.get('python', '?')}, daemon: {report.get('daemon', '?')}"
        )
    lines += ["", f"{'variant':<32}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'calls/s':>10}"]
    for name in VARIANTS:
        if name in stats:
            s = stats[name]
            lines.append(
                f"{VARIANT_TITLES[name]:<32}{s['p50_ms']:>9.2f}{s['p95_ms']:>9.2f}"
                f"{s['p99_ms']:>9.2f}{s['calls_per_s']:>10.1f}"
            )
    rs = report.get("ratios") or {}
    if rs:
        lines += ["", f"{'ratio':<32}{'p50':>9}{'p99':>9}"]
        for key, r in rs.items():
            lines.append(f"{key:<32}{_fmt_ratio(r['p50']):>9}{_fmt_ratio(r['p99']):>9}")
    ov = report.get("overhead_over_raw_ms")
    if ov:
        lines += [
            "",
            f"agentcg overhead over raw: {_fmt_ms(ov['p50'])} at p50, {_fmt_ms(ov['p99'])} at p99",
        ]
    cpu = report.get("daemon_cpu_ms_per_call")
    if cpu is not None:
        lines.append(f"daemon CPU per agentcg call: {cpu:.2f} ms (user + system, its own daemon)")
    tp = report.get("throughput")
    if tp:
        lines += ["", f"throughput, {tp['clients']} concurrent clients ({tp['calls']} calls each):"]
        for name in VARIANTS:
            if name in tp["calls_per_s"]:
                lines.append(
                    f"  {VARIANT_TITLES[name]:<30}{tp['calls_per_s'][name]:>10.1f} calls/s"
                )
        for key, r in (tp.get("ratios") or {}).items():
            lines.append(f"  {key + ' (calls/s)':<30}{_fmt_ratio(r):>10}")
    lines += ["", REFERENCE_NOTE]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- variants


def _run_none() -> None:
    rc = subprocess.run(TOOL, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"{TOOL[0]} exited {rc}")


class RawCgroups:
    """The raw-kernel variant: our own leaf per call under a private parent cgroup."""

    def __init__(self, mount: Path, tag: str) -> None:
        self.mount = mount
        self.parent = mount / f"agentcg-bench-{tag}-raw"
        self._seq = itertools.count(1)  # thread-safe enough under the GIL

    def setup(self) -> None:
        from agentcg.kernel.cgroup import Cgroup

        root = Cgroup(self.mount)
        if "memory" not in root.subtree_control():
            root.enable_controllers(["memory"])  # the root cgroup may do so with processes in it
        parent = Cgroup(self.parent).create()
        parent.enable_controllers(["memory"])

    def cleanup(self) -> None:
        from agentcg.kernel.cgroup import Cgroup

        Cgroup(self.parent).remove_tree(kill=True, timeout=10)

    def leaf(self) -> Path:
        return self.parent / f"t{os.getpid()}_{next(self._seq)}"

    def run(self, argv: Sequence[str] = TOOL, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        leaf = self.leaf()
        os.mkdir(leaf)
        try:
            _write(leaf / "memory.high", b"%d" % MEMORY_HIGH)
            _write(leaf / "memory.max", b"%d" % MEMORY_MAX)
            procs = str(leaf / "cgroup.procs")

            def enter() -> None:  # between fork and exec: raw syscalls only
                fd = os.open(procs, os.O_WRONLY)
                os.write(fd, b"0")  # "0" is the writing process itself
                os.close(fd)

            proc = subprocess.run(argv, preexec_fn=enter, check=False, **kwargs)
        finally:
            _rmdir(leaf)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {proc.returncode} in the raw variant")
        return proc


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _rmdir(path: Path, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # A reaped task may take a moment to leave the css_set; then EBUSY.
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def _agentcg_call(client: Any, argv: Sequence[str] = TOOL, **kwargs: Any) -> Any:
    with client.tool_call(memory="256M", label=LABEL) as call:
        proc = call.run(list(argv), **kwargs)
    if proc.returncode != 0 or call.outcome is None:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode} in the agentcg variant")
    return call, proc


# ----------------------------------------------------------------------------- daemon


@contextlib.contextmanager
def _daemon(sched: bool) -> Iterator[tuple[str, str, int | None]]:
    """(socket path, description, pid or None): $AGENTCG_SOCKET if set, else a daemon
    of our own, with its sched_ext scheduler (the default) or `[sched] enabled = false`."""
    from agentcg.devtools.daemonproc import DaemonProcess

    external = os.environ.get("AGENTCG_SOCKET")
    if external:
        if not sched:
            raise ValueError("--no-sched applies to the bench's own daemon, not $AGENTCG_SOCKET")
        yield external, f"external ($AGENTCG_SOCKET={external})", None
        return
    # The default 200 requests/s per connection would throttle a fast machine.
    config = "max_requests_per_second = 1000000" + ("" if sched else "\n[sched]\nenabled = false")
    with tempfile.TemporaryDirectory(prefix="agentcg-bench-") as work:
        d = DaemonProcess("bench", Path(work), config)
        try:
            d.start()
            assert d.proc is not None
            desc = f"own (started for this run, sched_ext {'on' if sched else 'off'})"
            yield str(d.socket), desc, d.proc.pid
        finally:
            d.remove()


def _cpu_ms(pid: int | None) -> float | None:
    """CPU time (user + system) the process has used, in ms; None without a pid."""
    if pid is None:
        return None
    from agentcg.kernel.process import stat_fields

    utime, stime = stat_fields(pid)[11:13]  # fields 14 and 15
    return (int(utime) + int(stime)) * 1000 / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- driver


def _wait_settled(client: Any, timeout: float = SETTLE_TIMEOUT_S) -> None:
    """The daemon compiles and loads its memory probe in the background (minutes under
    TCG) and reports it in `stats` once loaded or given up: time only after that, so
    the compiler does not run beside the measurement."""
    from agentcg.core.errors import AgentcgError

    deadline = time.monotonic() + timeout
    while True:
        try:
            loaded = client.request("stats").get("daemon", {}).get("bpf", [])
        except AgentcgError as e:
            if e.code != "timeout":  # it may answer slowly while bcc compiles
                raise
            loaded = []
        if any(p["name"] == SETTLE_PROGRAM for p in loaded):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not settle its {SETTLE_PROGRAM} probe in time")
        time.sleep(1.0)


def _check_placement(raw: RawCgroups, client: Any, mount: Path) -> None:
    """Once, before timing: both isolated variants really put the tool in its leaf."""
    out = raw.run(["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE, text=True).stdout
    if f"0::/{raw.parent.relative_to(mount)}/" not in out:
        raise RuntimeError(f"raw variant: the tool ran in the wrong cgroup: {out.strip()}")
    call, proc = _agentcg_call(
        client, ["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE, text=True
    )
    want = "0::/" + str(Path(call.info["cgroup"]).relative_to(mount))
    if want not in proc.stdout.splitlines():
        raise RuntimeError(f"agentcg variant: tool in {proc.stdout.strip()}, expected {want}")


class _ClientRunner:
    """One agent: its own connection, one tool call per invocation."""

    def __init__(self, path: str) -> None:
        from agentcg.client import Client

        self.client = Client(path)

    def __call__(self) -> None:
        _agentcg_call(self.client)

    def close(self) -> None:
        self.client.close()


def toolcall(
    calls: int, clients: int = 4, warmup: int | None = None, sched: bool = True
) -> dict[str, Any]:
    """Run the tool-call benchmark (as root, on a host with cgroup v2 controllers).

    Returns a JSON-able report; its "text" key is the human-readable table.
    `clients` > 1 adds a throughput run with that many concurrent agents (0 skips it).
    `sched=False` starts the daemon without its sched_ext scheduler.
    """
    from agentcg.client import Client
    from agentcg.kernel.cgroup import find_cgroup2_mount

    if calls < 1:
        raise ValueError("calls must be at least 1")
    if os.geteuid() != 0:
        raise PermissionError("agentcg bench toolcall needs root (it creates cgroups)")
    mount = find_cgroup2_mount()
    if mount is None or not (mount / "cgroup.controllers").exists():
        raise RuntimeError("no cgroup v2 hierarchy is mounted: run `agentcg doctor`")
    if "memory" not in (mount / "cgroup.controllers").read_text().split():
        raise RuntimeError(
            f"{mount} has no memory controller (bound to cgroup v1?): run `agentcg doctor`, "
            "or run the bench in the test VM (scripts/bench-vm)"
        )
    warmup = max(1, min(10, calls // 10)) if warmup is None else warmup
    tag = secrets.token_hex(4)
    raw = RawCgroups(mount, tag)
    t_start = time.time()
    with _daemon(sched) as (sock, daemon_desc, daemon_pid):
        raw.setup()
        try:
            with Client(sock) as client:
                _wait_settled(client)
                _check_placement(raw, client, mount)
                progress(f"{calls} calls x {len(VARIANTS)} variants, interleaved")
                cpu_before = _cpu_ms(daemon_pid)
                samples = interleaved(
                    {
                        "none": _run_none,
                        "raw": raw.run,
                        "agentcg": lambda: _agentcg_call(client),
                    },
                    calls,
                    warmup,
                )
                cpu_after = _cpu_ms(daemon_pid)
            daemon_cpu = (
                None
                if cpu_before is None or cpu_after is None
                else round((cpu_after - cpu_before) / (calls + warmup), 2)
            )
            throughput = None
            if clients > 1:
                progress(f"throughput: {clients} concurrent clients x {calls} calls")
                tp = measure_throughput(
                    {
                        "none": lambda: _run_none,
                        "raw": lambda: raw.run,
                        "agentcg": lambda: _ClientRunner(sock),
                    },
                    clients,
                    calls,
                )
                throughput = {
                    "clients": clients,
                    "calls": calls,
                    "calls_per_s": tp,
                    "ratios": {f"{a}/{b}": ratio(tp[a], tp[b]) for a, b in RATIOS},
                }
        finally:
            raw.cleanup()
    stats = {name: summarize(samples[name]) for name in VARIANTS}
    report: dict[str, Any] = {
        "bench": "toolcall",
        "calls": calls,
        "warmup": warmup,
        "tool": TOOL,
        "intent": {"memory": "256M", "label": LABEL},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        "duration_s": round(time.time() - t_start, 1),
        "environment": environment(),
        "daemon": daemon_desc,
        "sched": sched,
        "variants": stats,
        "ratios": ratios(stats),
        "overhead_over_raw_ms": overhead_ms(stats),
        "daemon_cpu_ms_per_call": daemon_cpu,
        "throughput": throughput,
        "reference": REFERENCE_NOTE,
    }
    report["text"] = format_report(report)
    return report

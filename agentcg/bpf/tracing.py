"""Exec tracing with bcc: which program started in which cgroup.

The BPF C source is bpf/exec_trace.c (installed as agentcg.bpf.csrc); its events are
struct agentcg_exec_event from bpf/include/agentcg/events.h, decoded through the ctypes
mirror in agentcg.bpf.events. A tracer is started once per daemon and polled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentcg.bpf.events import RawExecEvent, decode
from agentcg.bpf.sources import load_bcc
from agentcg.core.errors import AgentcgError, ErrorCode

SOURCE = "exec_trace.c"


@dataclass(frozen=True)
class ExecEvent:
    cgroup_id: int
    ts_ns: int  # CLOCK_MONOTONIC, comparable with time.monotonic_ns()
    pid: int
    ppid: int
    comm: str


class ExecTracer:
    """Collects ExecEvents from the sched:sched_process_exec tracepoint.

    Usage: t = ExecTracer(); t.start(); ... events = t.poll(100); ... t.close().
    Also a context manager.
    """

    def __init__(self) -> None:
        self._bpf: Any = None
        self._pending: list[ExecEvent] = []
        self._bad: str | None = None

    def start(self) -> None:
        """Compile and attach (once; later calls do nothing)."""
        if self._bpf is not None:
            return
        # TRACEPOINT_PROBE programs attach themselves when loaded.
        self._bpf = load_bcc(SOURCE, "exec tracing")
        self._bpf[b"exec_events"].open_ring_buffer(self._on_event)

    def _on_event(self, _ctx: Any, data: int, size: int) -> None:
        # Runs inside a ctypes callback, where an exception would only be printed:
        # keep the first problem for poll() to raise.
        try:
            raw = decode(data, size)
        except ValueError as e:
            self._bad = self._bad or str(e)
            return
        if not isinstance(raw, RawExecEvent):
            self._bad = self._bad or f"{raw.kind.name} event in the exec ring buffer"
            return
        self._pending.append(
            ExecEvent(
                raw.hdr.cgroup_id,
                raw.hdr.ts_ns,
                raw.pid,
                raw.ppid,
                raw.comm.decode(errors="replace"),
            )
        )

    def poll(self, timeout_ms: int = 0) -> list[ExecEvent]:
        """Events since the last poll, waiting up to timeout_ms (0: don't wait) for some."""
        if self._bpf is None:
            raise AgentcgError(
                ErrorCode.INTERNAL, "ExecTracer.poll() before start(); call start() first"
            )
        self._bpf.ring_buffer_poll(timeout_ms)
        if self._bad is not None:
            raise AgentcgError(
                ErrorCode.INTERNAL,
                f"the exec tracer read a bad event ({self._bad}); "
                "bpf/exec_trace.c and agentcg/bpf/events.py disagree: reinstall agentcg",
            )
        events, self._pending = self._pending, []
        return events

    def close(self) -> None:
        """Detach and free the program; safe to call twice."""
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> ExecTracer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

"""Exec tracing with bcc: which program started in which cgroup.

The BPF C source is package data (agentcg/bpf/exec_trace.c). bcc compiles it with
clang at start(), which takes seconds (tens of seconds under emulation), so a tracer
is started once per daemon and polled; never compile per request.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from importlib import resources
from typing import Any

from agentcg.core.errors import AgentcgError

TASK_COMM_LEN = 16


class _RawEvent(ctypes.Structure):
    # Mirrors struct exec_event in exec_trace.c.
    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("comm", ctypes.c_char * TASK_COMM_LEN),
    )


@dataclass(frozen=True)
class ExecEvent:
    cgroup_id: int
    pid: int
    ppid: int
    comm: str


def program_source() -> str:
    return resources.files("agentcg.bpf").joinpath("exec_trace.c").read_text()


class ExecTracer:
    """Collects ExecEvents from the sched:sched_process_exec tracepoint.

    Usage: t = ExecTracer(); t.start(); ... events = t.poll(100); ... t.close().
    Also a context manager.
    """

    def __init__(self) -> None:
        self._bpf: Any = None
        self._pending: list[ExecEvent] = []

    def start(self) -> None:
        """Compile and attach (once; later calls do nothing)."""
        if self._bpf is not None:
            return
        try:
            from bcc import BPF
        except ImportError as e:
            raise AgentcgError(
                "unavailable", f"bcc is not importable ({e}); install python3-bpfcc"
            ) from None
        try:
            # TRACEPOINT_PROBE programs attach themselves when loaded.
            self._bpf = BPF(text=program_source().encode())
        except Exception as e:  # bcc raises bare Exception on compile/load failures
            raise AgentcgError(
                "unavailable",
                f"cannot load the exec tracing BPF program: {e}; "
                "check kernel headers at /lib/modules/$(uname -r)/build and CAP_BPF",
            ) from None
        self._bpf[b"exec_events"].open_ring_buffer(self._on_event)

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> None:
        raw = ctypes.cast(data, ctypes.POINTER(_RawEvent)).contents
        self._pending.append(
            ExecEvent(raw.cgroup_id, raw.pid, raw.ppid, raw.comm.decode(errors="replace"))
        )

    def poll(self, timeout_ms: int = 0) -> list[ExecEvent]:
        """Events since the last poll, waiting up to timeout_ms (0: don't wait) for some."""
        if self._bpf is None:
            raise AgentcgError("internal", "ExecTracer.poll() before start(); call start() first")
        self._bpf.ring_buffer_poll(timeout_ms)
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

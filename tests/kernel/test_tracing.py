"""The bcc exec tracer on the real kernel: an exec inside a known cgroup carries its id."""

import os
import subprocess
import time

import pytest

from agentcg.bpf.tracing import ExecTracer
from agentcg.kernel.cgroup import Cgroup
from tests.kernel.cgroup_fixture import scratch_cgroup

pytestmark = [pytest.mark.kernel, pytest.mark.requires("bcc")]


@pytest.fixture
def cgroup_base():
    with scratch_cgroup() as base:
        yield base


def test_exec_is_seen_with_its_cgroup_id(cgroup_base):
    leaf = cgroup_base.child("trace").create()
    # Compiling takes tens of seconds under TCG; one tracer for the whole test.
    with ExecTracer() as tracer:
        # sh execs before it is moved (event in our cgroup), then waits for a line and
        # execs /bin/true from inside the leaf. It is moved only once it has said so:
        # Popen returns when the exec closed its pipe, before the exec tracepoint fires.
        p = subprocess.Popen(
            ["sh", "-c", "echo up; read _; exec /bin/true"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert p.stdout is not None
        assert p.stdout.readline() == b"up\n"
        leaf.add_process(p.pid)
        p.communicate(b"\n", timeout=60)
        assert p.returncode == 0
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen += [e for e in tracer.poll(200) if e.pid == p.pid]
            if any(e.comm == "true" for e in seen):
                break
    by_comm = {e.comm: e for e in seen}
    assert "true" in by_comm, f"no exec of /bin/true seen; got {seen}"
    assert by_comm["true"].cgroup_id == leaf.cgroup_id
    assert by_comm["sh"].ts_ns <= by_comm["true"].ts_ns <= time.monotonic_ns()
    assert by_comm["true"].ppid == os.getpid()
    assert by_comm["sh"].cgroup_id == Cgroup.of_pid(os.getpid()).cgroup_id
    assert by_comm["sh"].cgroup_id != leaf.cgroup_id

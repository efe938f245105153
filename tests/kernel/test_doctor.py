"""`agentcg doctor` on a kernel that can enforce: the facts it must find there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    # Parsing the kernel's BTF takes minutes under TCG: one run for the module.
    r = subprocess.run(
        [sys.executable, "-m", "agentcg.cli.doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out: dict[str, Any] = json.loads(r.stdout)
    assert r.returncode == out["exit_code"] <= 1, r.stdout + r.stderr
    return out


def test_doctor_json(report: dict[str, Any]) -> None:
    f = report["features"]
    assert f["cgroups"] and f["psi"]
    checks = {c["name"]: c for c in report["checks"]}
    assert "created and removed" in checks["delegated subtree"]["fact"]
    # sched_ext is reported as present exactly when the kernel exposes it.
    has_scx = Path("/sys/kernel/sched_ext/state").exists()
    assert checks["sched_ext"]["fact"].startswith("state ") == has_scx, checks["sched_ext"]
    for c in report["checks"]:
        assert c["status"] in ("ok", "warn", "fail") and c["source"] and c["gates"]
    assert report["features_off"] == [k for k, on in f.items() if not on]


@pytest.mark.requires("test_kernel")
def test_doctor_on_the_pinned_kernel(report: dict[str, Any]) -> None:
    f = report["features"]
    assert f["btf"] and f["sched_ext"] and f["sched_ext_sub"] and f["memcg_kfuncs"]
    # Unmerged upstream series: absent from the 7.3 kernel.
    assert not f["memcg_bpf_ops"] and not f["bpf_oom_ops"]
    assert "memcg_bpf_ops" in report["features_off"]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["sched_ext"]["fact"].startswith("state disabled")

"""`agentcg doctor` on the 7.3 test kernel: the facts it must find there."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kernel


def test_doctor_json_in_vm():
    if os.environ.get("AGENTCG_IN_VM") != "1":
        pytest.skip("kernel tests run only inside the test VM (scripts/vm-run)")
    r = subprocess.run(
        [sys.executable, "-m", "agentcg.cli.doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(r.stdout)
    assert r.returncode == report["exit_code"] <= 1, r.stdout + r.stderr
    f = report["features"]
    assert f["cgroups"] and f["psi"] and f["btf"]
    assert f["sched_ext"] and f["sched_ext_sub"] and f["memcg_kfuncs"]
    # Unmerged upstream series: absent from the 7.3 kernel.
    assert not f["memcg_bpf_ops"] and not f["bpf_oom_ops"]
    assert "memcg_bpf_ops" in report["features_off"]
    checks = {c["name"]: c for c in report["checks"]}
    assert "created and removed" in checks["delegated subtree"]["fact"]
    assert checks["sched_ext"]["fact"].startswith("state disabled")
    for c in report["checks"]:
        assert c["status"] in ("ok", "warn", "fail") and c["source"] and c["gates"]

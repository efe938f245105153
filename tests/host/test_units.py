"""The systemd units: `systemd-analyze verify` accepts them, and they say what we rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("agentcg.service", "agentcg-exporter.service")


def settings(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def systemd_version() -> int:
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True).stdout
    return int(re.match(r"systemd (\d+)", out).group(1))  # type: ignore[union-attr]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at this interpreter's
    # agentcg entry point instead of /usr/bin/agentcg, the only change.
    agentcg = Path(sys.executable).parent / "agentcg"
    assert agentcg.exists()
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        assert "ExecStart=/usr/bin/agentcg " in text
        (tmp_path / unit).write_text(text.replace("/usr/bin/agentcg", str(agentcg)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *UNITS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        # DelegateSubgroup= arrived in systemd 254; older ones ignore it, and the
        # daemon's --delegated copes with either (it looks for supervisor/ itself).
        if not (systemd_version() < 254 and "Unknown key 'DelegateSubgroup'" in line)
    ]
    assert done.returncode == 0 and not complaints, complaints


def test_daemon_unit_is_notify_delegated_and_restarts() -> None:
    s = settings("agentcg.service")
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] and s["Delegate"] == ["yes"] and s["KillMode"] == ["process"]
    assert s["Restart"] == ["on-failure"] and s["ExecStart"][0].endswith("daemon --delegated")
    # Hardening must leave cgroupfs and BPF usable.
    assert "ProtectControlGroups" not in s and "ProtectKernelTunables" not in s
    caps = s["CapabilityBoundingSet"][0].split()
    assert {"CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_KILL"} <= set(caps)
    assert s["IPAddressDeny"] == ["any"]  # the daemon serves no TCP


def test_exporter_unit_is_unprivileged_and_on_loopback() -> None:
    s = settings("agentcg-exporter.service")
    assert s["User"] == ["agentcg-exporter"] and s["CapabilityBoundingSet"] == [""]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ExecStart"] == ["/usr/bin/agentcg exporter --listen 127.0.0.1:9745"]

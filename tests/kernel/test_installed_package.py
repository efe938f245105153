"""An installed agentcg (a wheel built from this checkout, not the editable install) finds
its BPF C sources and attaches its tracer, run from outside the checkout."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.requires("bcc")]

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(
    ".git", ".venv", ".cache", "build", "*.egg-info", "__pycache__", ".*_cache"
)

# Runs with the installed copy first on its path (ahead of the editable install): it must find
# the C sources there, compile them, and see an exec of its own child.
PROBE = """
import json, subprocess, agentcg
from agentcg.bpf import sources
from agentcg.bpf.tracing import ExecTracer
with ExecTracer() as tracer:
    child = subprocess.run(["/bin/true"]).returncode
    seen = []
    for _ in range(100):
        seen += [e.comm for e in tracer.poll(100)]
        if "true" in seen:
            break
print(json.dumps({"package": agentcg.__file__, "sources": str(sources.source_root()),
                  "child": child, "saw_true": "true" in seen}))
"""


# setuptools' PEP 517 backend, as pip calls it, in one interpreter (pip itself costs
# minutes under emulation); a pure-Python wheel installs by unpacking it.
BUILD = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"


def test_installed_wheel_finds_its_c_sources_and_attaches(tmp_path):
    # Built from a copy, so the shared checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP, symlinks=True)
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-c", BUILD, str(dist)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    wheel = dist / built.stdout.split()[-1]
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        whl.extractall(site)
    assert "agentcg/bpf/csrc/exec_trace.c" in names
    assert "agentcg/bpf/csrc/include/agentcg/events.h" in names
    assert not [n for n in names if "vmlinux" in n], "vmlinux.h is a build input, not package data"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert Path(result["package"]).is_relative_to(site), result
    assert Path(result["sources"]) == site / "agentcg/bpf/csrc", result
    assert result["child"] == 0
    assert result["saw_true"], "the installed tracer saw no exec of /bin/true"

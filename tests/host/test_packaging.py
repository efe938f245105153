"""pyproject.toml lists every package, since the C sources' mapping needs an explicit list."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"agentcg", *(f"agentcg.{p}" for p in find_packages(str(ROOT / "agentcg")))}
    assert listed - {"agentcg.bpf.csrc"} == found, (
        "add new subpackages of agentcg/ to [tool.setuptools] packages in pyproject.toml"
    )
    assert config["package-dir"]["agentcg.bpf.csrc"] == "bpf"


def test_missing_c_sources_say_what_to_do(tmp_path):
    # A copy of the package without bpf/: python -S keeps the editable install away.
    site = tmp_path / "site"
    shutil.copytree(ROOT / "agentcg", site / "agentcg")
    out = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "from agentcg.bpf.tracing import ExecTracer as T; T().start()",
        ],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "the BPF C sources (agentcg.bpf.csrc) are not installed with agentcg" in last, last

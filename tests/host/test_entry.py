"""The `agentcg` executable's fast `run` path: its option parser, and what it imports."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agentcg.cli.entry import UsageError, parse_run, run_main
from agentcg.client import connection
from agentcg.core import protocol


def test_options_then_command():
    opts, cmd = parse_run(["-m", "2G", "--label", "pytest", "--", "pytest", "-x"])
    assert opts == {"memory": "2G", "label": "pytest"} and cmd == ["pytest", "-x"]


def test_option_forms_and_types():
    opts, cmd = parse_run(
        ["--memory=512M", "-phigh", "--cpu", "1.5", "--pids", "64", "--latency-sensitive", "ls"]
    )
    assert opts == {
        "memory": "512M",
        "priority": "high",
        "cpu": 1.5,
        "pids": 64,
        "latency_sensitive": True,
    }
    assert cmd == ["ls"]
    waiting = parse_run(["--wait", "0", "-s", "x", "true"])
    assert waiting == ({"wait_s": 0.0, "session": "x"}, ["true"])


def test_options_end_at_the_command():
    # The command's own options stay its own, even when they look like ours.
    assert parse_run(["ls", "--memory", "1G"]) == ({}, ["ls", "--memory", "1G"])
    assert parse_run(["--", "--weird-tool", "-m"]) == ({}, ["--weird-tool", "-m"])
    assert parse_run(["-s", "task", "-", "x"]) == ({"session": "task"}, ["-", "x"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nope", "ls"], "no such option: --nope"),
        (["--cpu", "lots", "ls"], "--cpu: 'lots' is not a valid number"),
        (["--pids=1.5", "ls"], "--pids: '1.5' is not a valid integer"),
        (["-m"], "option -m requires a value"),
        (["-m", "1G"], "missing COMMAND"),
        ([], "missing COMMAND"),
    ],
)
def test_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_run(argv)


def test_usage_error_and_help_exit_codes(capsys):
    assert run_main(["--nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: agentcg run") and err.endswith("Error: no such option: --nope\n")
    assert run_main(["--help"]) == 0
    assert "--latency-sensitive" in capsys.readouterr().out


def test_sdk_speaks_the_daemons_protocol_version():
    assert connection.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION


def test_run_path_imports_only_what_it_needs(tmp_path: Path):
    """What `agentcg run -- true` loads, from the installed command's first line to its
    connect (start-up time; docs/benchmarks.md): no click, asyncio, typing or daemon, nor
    the standard library's Python layers the run path does without (subprocess, json and
    re, socket, queue, contextlib, signal.py). Without site (-S), so that .pth files of
    this venv do not preload anything."""
    root = Path(__file__).resolve().parents[2]
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        f"os.environ['AGENTCG_SOCKET'] = {str(tmp_path / 'nobody-listens.sock')!r}\n"
        "sys.argv = ['agentcg', 'run', '--', 'true']\n"
        "before = set(sys.modules)\n"
        "try:\n"
        f"    exec(compile(open({str(root / 'bin' / 'agentcg')!r}).read(), 'agentcg', 'exec'))\n"
        "except SystemExit as e:\n"
        "    print(e.code, sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert "cannot reach the agentcg daemon" in out.stderr
    status, loaded = out.stdout.split(" ", 1)
    assert status == "1"
    modules = set(ast.literal_eval(loaded))
    assert {"agentcg.cli.run", "agentcg.client.connection"} <= modules
    heavy = {"click", "asyncio", "typing", "agentcg.core.protocol", "agentcg.core.intent"}
    heavy |= {"subprocess", "json", "re", "socket", "selectors", "queue", "contextlib", "signal"}
    assert not heavy & modules, heavy & modules
    assert not {m for m in modules if m.startswith(("agentcg.daemon", "agentcg.kernel"))}


def test_the_command_is_the_launcher_script():
    # Not a [project.scripts] entry point: pip's wrapper for one imports `re` first.
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "scripts" not in project["project"]
    assert project["tool"]["setuptools"]["script-files"] == ["bin/agentcg"]

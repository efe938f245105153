"""Metrics for real: the stats op over real tool calls, the exporter as an unprivileged
user, `promtool check metrics` on a live scrape, and a real Prometheus server running
every PromQL expression of the Grafana dashboard."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentcg.client import Client
from agentcg.client.stats import fetch_stats
from agentcg.core.errors import AgentcgError
from tests.kernel.daemon_fixture import RunningDaemon
from tests.kernel.other_uid import ForOthers

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534  # the metrics reader (the exporter's user)
AGENT_UID = 4242  # an ordinary agent: neither admin nor reader
WAIT_S = 240.0  # Prometheus is a 100 MB binary read over 9p and run under TCG
CONFIG = f'[metrics]\nreader_uids = [{NOBODY}]\ntool_kinds = ["pytest", "git", "build"]'
OOM = "b = bytearray(100 << 20); b[::4096] = b'x' * len(b[::4096])"
# Touch N MiB, say so, then hold it (or exit at once with "exit").
HOLD = (
    "import sys, time\n"
    "b = bytearray(int(sys.argv[1]) << 20)\n"
    "b[::4096] = b'x' * len(b[::4096])\n"
    "print('ready', flush=True)\n"
    "time.sleep(0 if sys.argv[2] == 'exit' else 600)\n"
)


def as_uid(uid: int, code: str, daemon: RunningDaemon, others: ForOthers) -> Any:
    """Run python code as another uid with the SDK importable; its stdout as JSON."""
    done = subprocess.run(
        [others.python, "-c", code],
        **others.as_uid(uid, daemon.socket),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def finished_calls(c: Client, session: str) -> None:
    """An ok, a failed and an OOM-killed call, the last with a label outside tool_kinds."""
    with c.tool_call(session=session, memory="32M", label="git") as call:
        call.run(["true"])
    with c.tool_call(session=session, memory="32M", label="pytest") as call:
        call.run(["sh", "-c", "exit 3"])
    with c.tool_call(session=session, memory="32M", label="agent-made-up") as call:
        proc = call.run([sys.executable, "-c", OOM], stderr=subprocess.DEVNULL)
    assert proc.returncode == -9 and call.outcome["killed_reason"] == "oom"


@pytest.mark.parametrize("daemon", [CONFIG], indirect=True)
@pytest.mark.fresh_daemon  # counts what the daemon did since it started
def test_stats_counts_real_calls_and_scopes_by_peer(
    daemon: RunningDaemon, for_others: ForOthers
) -> None:
    with Client() as c:
        c.open_session("metered", memory="256M")
        finished_calls(c, "metered")
        with pytest.raises(AgentcgError):
            c.request("session.status", session="absent")
        snap = fetch_stats()

    assert snap["scope"] == "all"
    d = snap["daemon"]
    assert d["calls_started"] == 3
    assert {k: d["calls_finished"][k] for k in ("ok", "failed", "oom")} == {
        "ok": 1,
        "failed": 1,
        "oom": 1,
    }
    assert set(snap["tools"]) == {"git", "pytest", "other"}  # the made-up label is "other"
    assert {"op": "session.status", "code": "not_found", "count": 1} in d["errors"]
    assert d["requests"]["call.begin"] == 3
    assert {"action": "kill", "reason": "oom", "count": 1} in d["actions"]
    metered = next(s for s in snap["sessions"] if s["session"] == "metered")
    assert metered["memory"] == 256 << 20
    assert metered["counters"]["calls_started"] == 3
    assert metered["counters"]["calls_finished"] == {"ok": 1, "failed": 1, "oom": 1}
    assert metered["usage"]["cpu_usage_s"] > 0
    assert set(metered["usage"]["pressure"]["memory"]) == {"some", "full"}
    assert any(a["action"] == "kill" and a["reason"] == "oom" for a in snap["recent_actions"])

    # The exporter's uid (a metrics reader, not an admin) sees every session.
    reader = as_uid(
        NOBODY,
        "import json; from agentcg.client.stats import fetch_stats as f; print(json.dumps(f()))",
        daemon,
        for_others,
    )
    assert reader["scope"] == "all" and "metered" in {s["session"] for s in reader["sessions"]}
    # An ordinary agent sees its own session only, and nothing daemon-wide.
    agent = as_uid(
        AGENT_UID,
        "import json\n"
        "from agentcg.client import Client\n"
        "from agentcg.client.stats import fetch_stats\n"
        "from agentcg.core.errors import AgentcgError\n"
        "c = Client(); c.open_session('agents-own')\n"
        "try:\n    fetch_stats(session='metered'); other = 'ok'\n"
        "except AgentcgError as e:\n    other = e.code\n"
        "print(json.dumps({'snap': fetch_stats(), 'other': other}))\n",
        daemon,
        for_others,
    )
    assert agent["snap"]["scope"] == "own"
    assert [s["session"] for s in agent["snap"]["sessions"]] == ["agents-own"]
    assert "daemon" not in agent["snap"] and "tools" not in agent["snap"]
    assert agent["other"] == "unauthorized"

    # A closed session disappears from the stats.
    with Client() as c:
        c.close_session("metered")
    assert "metered" not in {s["session"] for s in fetch_stats()["sessions"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def _wait(what: str, probe: Any, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except OSError as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


@pytest.fixture
def exporter(daemon: RunningDaemon, tmp_path: Path, for_others: ForOthers) -> Iterator[str]:
    """`agentcg exporter` as the unprivileged reader uid; yields its base URL."""
    port = _free_port()
    log = (tmp_path / "exporter.log").open("wb")
    proc = subprocess.Popen(
        [
            for_others.python,
            *("-m", "agentcg.cli.main", "exporter"),
            *("--listen", f"127.0.0.1:{port}", "--socket", str(daemon.socket)),
        ],
        **for_others.as_uid(NOBODY, daemon.socket),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait("the exporter", lambda: "agentcg_up 1.0" in _get(url + "/metrics"))
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        print("--- exporter log\n" + (tmp_path / "exporter.log").read_text(errors="replace"))


@pytest.fixture
def prometheus(exporter: str, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the exporter every second, configured from
    deploy/prometheus/prometheus.yml; yields its base URL."""
    config = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    for was, now in [
        ("127.0.0.1:9745", exporter.removeprefix("http://")),
        # Every 5 s: a scrape (connect, stats, exposition) can take seconds under TCG,
        # and one that overruns its timeout stores nothing.
        ("scrape_interval: 15s", "scrape_interval: 5s"),
        ("scrape_timeout: 10s", "scrape_timeout: 5s"),
    ]:
        assert was in config
        config = config.replace(was, now)
    (tmp_path / "prometheus.yml").write_text(config)
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def scraped() -> list[dict[str, Any]]:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            return _query(url, "agentcg_up == 1")

        _wait("Prometheus to scrape the exporter", scraped)
        yield url
    finally:
        proc.terminate()
        proc.wait(60)
        print("--- prometheus log\n" + (tmp_path / "prometheus.log").read_text()[-3000:])


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    """Run one PromQL expression; raise if Prometheus rejects it, return its series."""
    reply = json.loads(_get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert reply["status"] == "success", f"{expr}: {reply}"
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, with Grafana's variables filled in the
    way "All" fills them; a label_values() variable query becomes its metric."""
    dash = json.loads((ROOT / "deploy/grafana/dashboards/agentcg.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+), *(\w+)\)", var["query"]["query"])
        assert m, var
        exprs.append(f"count by ({m.group(2)}) ({m.group(1)})")
    subst = {"$session": ".*", "$tool": ".*", "$__rate_interval": "1m"}
    out = []
    for e in exprs:
        for k, v in subst.items():
            e = e.replace(k, v)
        assert "$" not in e, e
        out.append(e)
    return out


@pytest.mark.parametrize("daemon", [CONFIG], indirect=True)
def test_prometheus_runs_every_dashboard_query(
    daemon: RunningDaemon, exporter: str, prometheus: str
) -> None:
    # promtool's linter on what the exporter serves right now.
    scrape = _get(exporter + "/metrics")
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    with Client() as c:
        c.open_session("metered", memory="256M")
        finished_calls(c, "metered")
        with pytest.raises(AgentcgError):
            c.request("session.status", session="absent")
        # A throttle and a pressure kill, as in test_memory_policy: a critical
        # call needs more than the session has next to a low-priority one.
        session = c.open_session("crowded", memory="320M")
        low = c.tool_call(session=session, memory="200M", priority="low", label="build")
        holder = low.popen(
            [sys.executable, "-c", HOLD, "150", "hold"], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"

        def critical() -> None:
            with (
                Client() as c2,
                c2.tool_call(
                    session=session, memory="200M", priority="critical", label="pytest"
                ) as call,
            ):
                call.run([sys.executable, "-c", HOLD, "200", "exit"], stdout=subprocess.PIPE)

        t = threading.Thread(target=critical)
        t.start()
        t.join(WAIT_S)
        holder.wait(60)
        assert low.end(holder.returncode)["killed_reason"] == "pressure"
        # A call still running, so the per-call views have something to show.
        sleeper = c.tool_call(session=session, memory="16M", label="git").begin()
        tool = sleeper.popen(["sleep", "600"])
        try:
            # Enough scrapes after the last event for rate() over 1m to see it.
            _wait(
                "the pressure kill to reach Prometheus",
                lambda: _query(
                    prometheus, 'agentcg_session_actions_total{action="kill",reason="pressure"}'
                ),
            )
            time.sleep(12)  # two more scrapes: rate() over 1m needs two samples
            empty = []
            for expr in dashboard_queries():
                if not _query(prometheus, expr):
                    empty.append(expr)
            assert not empty, f"dashboard queries without series: {empty}"
            # The OOM call above went over its ask: the daemon raised its limit on a
            # kernel report, so the detection->action histogram has a sample.
            raised = _query(prometheus, 'agentcg_detection_to_action_seconds_count{action="raise"}')
            assert float(raised[0]["value"][1]) >= 1
        finally:
            tool.kill()
            tool.wait()
            sleeper.end(-9)

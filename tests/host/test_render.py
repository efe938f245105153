"""What `agentcg status` and `agentcg top` print from a stats snapshot."""

from __future__ import annotations

import copy

from agentcg.cli import render
from tests.host.test_exporter import sample_snapshot


def test_status_text_lists_sessions_calls_and_actions():
    text = render.status_text(sample_snapshot())
    lines = text.splitlines()
    assert lines[0].startswith("sessions: 1, tool calls running: 1, clients: 3")
    row = next(line for line in lines if line.startswith("task-1"))
    assert "uid 1000" in row and "200 MiB" in row and "1.0 GiB" in row
    assert any(line.startswith("  c0123456789ab") and "pytest" in line for line in lines)
    assert "last actions:" in lines
    assert any("kill (pressure)" in line for line in lines)


def test_rates_need_two_snapshots():
    before = sample_snapshot()
    after = copy.deepcopy(before)
    after["sessions"][0]["usage"]["cpu_usage_s"] += 0.5  # half a core over one second
    after["sessions"][0]["usage"]["pressure"]["memory"]["some"] += 0.1
    first = render.rows(before)[0].cells
    assert first[6] == "-" and first[7] == "-"
    cells = render.rows(after, before, 1.0)[0].cells
    assert cells[6] == "50.0" and cells[7] == "10.0"


def test_own_scope_summary_and_no_sessions():
    snap = sample_snapshot()
    del snap["daemon"]
    snap["sessions"] = []
    assert render.summary(snap) == "your sessions: 0, tool calls running: 0"
    assert "(no sessions)" in render.status_text(snap)


def test_rows_fit_their_columns():
    for row in render.rows(sample_snapshot()):
        assert len(row.text()) <= sum(render.WIDTHS) + len(render.WIDTHS)

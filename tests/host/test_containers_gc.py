"""Container labels to sessions, and which sessions the GC closes; config keys."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from agentcg.core.config import Config
from agentcg.core.containers import container_session
from agentcg.core.errors import AgentcgError
from agentcg.core.gc import SessionUse, sweep
from agentcg.core.model import Session, session_from_record
from agentcg.core.records import check_record
from agentcg.kernel.process import alive, start_ticks
from tests.host.test_config import load

PRIORITIES = Config.default().priorities
ROOT = Path(__file__).resolve().parents[2]


def test_labels_become_session_arguments():
    want = container_session(
        {
            "agentcg.session": "task-42",
            "agentcg.memory": "4G",
            "agentcg.cpu": "1.5",
            "agentcg.pids": "512",
            "agentcg.priority": "high",
            "com.example.other": "ignored",
        },
        PRIORITIES,
    )
    assert want.name == "task-42" and want.priority == "high"
    assert want.args == {"name": "task-42", "memory": 4 << 30, "cpu": 1.5, "pids": 512}
    assert container_session({"agentcg.session": "s"}, PRIORITIES).args == {"name": "s"}


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ({"agentcg.session": "Bad/Name"}, "agentcg.session"),
        ({"agentcg.session": "s", "agentcg.memory": "lots"}, "agentcg.memory"),
        ({"agentcg.session": "s", "agentcg.cpu": "two"}, "agentcg.cpu"),
        ({"agentcg.session": "s", "agentcg.pids": "0"}, "agentcg.pids"),
        ({"agentcg.session": "s", "agentcg.priority": "urgent"}, "agentcg.priority"),
        ({"agentcg.session": "s", "agentcg.budget": "1G"}, "unknown label agentcg.budget"),
    ],
)
def test_bad_labels_say_which(labels, says):
    with pytest.raises(AgentcgError) as ei:
        container_session(labels, PRIORITIES)
    assert ei.value.code == "invalid_value" and says in ei.value.message


def test_sweep_closes_after_the_grace_and_at_once_when_gone():
    uses = [
        SessionUse("busy", exists=True, in_use=True),
        SessionUse("idle", exists=True, in_use=False),
        SessionUse("vanished", exists=False, in_use=False),
    ]
    close, idle = sweep(uses, {}, now=100.0, grace=60.0)
    assert close == ["vanished"] and idle == {"idle": 100.0}
    close, idle = sweep(uses[:2], idle, now=159.0, grace=60.0)
    assert close == [] and idle == {"idle": 100.0}
    close, idle = sweep(uses[:2], idle, now=160.0, grace=60.0)
    assert close == ["idle"] and idle == {}


def test_use_again_resets_the_grace():
    _, idle = sweep([SessionUse("s", True, False)], {}, now=0.0, grace=10.0)
    _, idle = sweep([SessionUse("s", True, True)], idle, now=5.0, grace=10.0)
    close, idle = sweep([SessionUse("s", True, False)], idle, now=12.0, grace=10.0)
    assert close == [] and idle == {"s": 12.0}


def test_config_keys(tmp_path):
    c = load(tmp_path, "")
    assert c.session.orphan_grace_s == 60.0
    assert c.docker.socket == Path("/run/docker.sock")
    c = load(tmp_path, '[session]\norphan_grace_s = "none"\n[docker]\nsocket = "none"\n')
    assert c.session.orphan_grace_s is None and c.docker.socket is None


def test_the_example_compose_file_asks_for_a_valid_session():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "deploy/docker/compose.yaml").read_text())
    agent = compose["services"]["agent"]
    want = container_session(agent["labels"], PRIORITIES)
    assert want.name == "task-42" and want.args["memory"] == 4 << 30
    assert "/run/agentcg:/run/agentcg:ro" in agent["volumes"]


def test_grafana_provisioning_points_the_dashboard_at_its_datasource():
    yaml = pytest.importorskip("yaml")
    grafana = ROOT / "deploy/grafana"
    ds = yaml.safe_load((grafana / "provisioning/datasources/agentcg.yaml").read_text())
    uid = ds["datasources"][0]["uid"]
    dash = json.loads((grafana / "dashboards/agentcg.json").read_text())
    used = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
    used |= {t["datasource"]["uid"] for p in dash["panels"] for t in p.get("targets", [])}
    assert used == {uid}
    provider = yaml.safe_load((grafana / "provisioning/dashboards/agentcg.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "agentcg"


def test_session_records_carry_their_opener():
    sess = Session("s", 1000, None, None, None, None, 8, 1.0, owner_pid=42, owner_start=7)
    rec = sess.record()
    assert check_record("sessions", "s", rec) is None
    back = session_from_record(rec)
    assert back is not None and (back.owner_pid, back.owner_start) == (42, 7)
    old = {k: v for k, v in rec.items() if k not in ("owner_pid", "owner_start")}
    assert check_record("sessions", "s", old) is None  # records from before still load


def test_a_process_is_its_pid_and_start_time():
    me = start_ticks(os.getpid())
    assert me is not None and alive(os.getpid(), me) and alive(os.getpid(), None)
    assert not alive(os.getpid(), me + 1)  # a recycled pid is another process
    child = subprocess.Popen(["true"])
    child.wait()
    assert not alive(child.pid, None)

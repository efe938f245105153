import json
import os
from pathlib import Path

import pytest

from agentcg.daemon.lock import DaemonLock
from agentcg.daemon.state import State, StateDirError, check_separate

SESSION = {
    "name": "s1",
    "owner_uid": 1000,
    "container": None,
    "memory": 1 << 30,
    "cpu": None,
    "pids": 100,
    "max_calls": 8,
    "created": 1.0,
    "adopted": {"42": "/user.slice/user-1000.slice/session-2.scope"},
}
CALL = {
    "session": "s1",
    "token": "ab" * 16,
    "owner_uid": 1000,
    "owner_pid": 4242,
    "intent": {
        "memory": 1 << 20,
        "memory_class": None,
        "priority": "normal",
        "latency_sensitive": False,
        "cpu": None,
        "pids": None,
        "timeout": None,
        "label": "pytest",
    },
    "limits": {
        "memory_high": 1 << 20,
        "memory_max": 1 << 21,
        "memory_low": 0,
        "cpu_weight": 100,
        "cpu_max": [50000, 100000],
        "pids_max": None,
        "timeout_s": None,
    },
    "started": 2.0,
}


def test_records_round_trip_and_drop(tmp_path: Path) -> None:
    st = State(tmp_path / "state")
    st.put("sessions", "s1", SESSION)
    st.put("calls", "c0123456789ab", CALL)
    st.put("calls", "c0123456789ab", {**CALL, "token": "cd" * 16})  # replaced atomically
    found, rejected = st.load()
    assert found["sessions"] == {"s1": SESSION}
    assert found["calls"] == {"c0123456789ab": {**CALL, "token": "cd" * 16}}
    assert rejected == []
    st.drop("calls", "c0123456789ab")
    st.drop("calls", "c000000000000")
    assert st.load()[0]["calls"] == {}
    assert not [n for n in os.listdir(st.dir / "calls") if n.endswith(".tmp")]
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_torn_foreign_or_forged_records_are_rejected_with_a_reason(tmp_path: Path) -> None:
    st = State(tmp_path / "state")
    st.put("sessions", "good", {**SESSION, "name": "good"})
    sessions = st.dir / "sessions"
    (sessions / "torn.json").write_text('{"name": "to')
    (sessions / "list.json").write_text("[1, 2]")
    (sessions / "evil.json").write_text(json.dumps({**SESSION, "name": "evil", "owner_uid": "0"}))
    (sessions / "other.json").write_text(json.dumps({**SESSION, "name": "good"}))
    escape = {**SESSION, "name": "esc", "adopted": {"1": "/../../etc"}}
    (sessions / "esc.json").write_text(json.dumps(escape))
    (st.dir / "calls" / "c0123456789ab.json").write_text(
        json.dumps({**CALL, "limits": {**CALL["limits"], "cpu_weight": 0}})
    )
    (st.dir / "calls" / "..json").write_text(json.dumps(CALL))
    found, rejected = st.load()
    assert found["sessions"] == {"good": {**SESSION, "name": "good"}}
    assert found["calls"] == {}
    why = {line.split(": ", 1)[0].rsplit("/", 1)[1]: line.split(": ", 1)[1] for line in rejected}
    assert set(why) == {
        "torn.json", "list.json", "evil.json", "other.json", "esc.json",
        "c0123456789ab.json", "..json",
    }  # fmt: skip
    assert "owner_uid" in why["evil.json"]
    assert "filed as 'other'" in why["other.json"]
    assert "adopted" in why["esc.json"]
    assert "cpu_weight" in why["c0123456789ab.json"]


def test_planted_symlinks_are_never_followed(tmp_path: Path) -> None:
    st = State(tmp_path / "state")
    st.put("sessions", "s1", SESSION)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # A link where the record goes is replaced, not written through; a link as a
    # record is not read; a stale temp file is removed.
    (st.dir / "sessions" / "s2.json").symlink_to(victim)
    (st.dir / "sessions" / ".s1.0000.tmp").symlink_to(victim)
    found, rejected = st.load()
    assert list(found["sessions"]) == ["s1"] and len(rejected) == 1
    st.put("sessions", "s2", {**SESSION, "name": "s2"})
    assert victim.read_text() == "precious"
    assert not (st.dir / "sessions" / "s2.json").is_symlink()
    assert not (st.dir / "sessions" / ".s1.0000.tmp").exists()


def test_state_dir_must_be_private_and_reached_without_symlinks(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    with pytest.raises(StateDirError, match="mode 0700"):
        State(loose).open()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(StateDirError, match="symlink"):
        State(tmp_path / "link").open()
    with pytest.raises(StateDirError, match="symlink"):
        State(tmp_path / "link" / "sub").open()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(StateDirError, match="writable by others"):
        State(shared / "state").open()
    with pytest.raises(StateDirError, match="overlap"):
        check_separate(Path("/run/agentcg"), Path("/run/agentcg/agentcg.sock"))
    with pytest.raises(StateDirError, match="overlap"):
        check_separate(Path("/run/agentcg/state"), Path("/run/agentcg/agentcg.sock"))
    check_separate(Path("/var/lib/agentcg"), Path("/run/agentcg/agentcg.sock"))


def test_nothing_saved_yet(tmp_path: Path) -> None:
    assert State(tmp_path / "absent").load() == ({"sessions": {}, "calls": {}, "anchors": {}}, [])


def test_second_lock_names_the_holder(tmp_path: Path) -> None:
    first, second = State(tmp_path / "state"), State(tmp_path / "state")
    held = DaemonLock.state_dir(first.open(), "x")
    with pytest.raises(Exception, match=rf"another agentcg daemon \(pid {os.getpid()}\)"):
        DaemonLock.state_dir(second.open(), "x")
    held.close()
    DaemonLock.state_dir(second.open(), "x").close()


def test_one_daemon_per_host_runs_the_scheduler(tmp_path: Path) -> None:
    path = str(tmp_path / "sched.lock")
    owner = DaemonLock.scheduler(path)
    with pytest.raises(Exception, match=rf"daemon \(pid {os.getpid()}\) runs the sched_ext"):
        DaemonLock.scheduler(path)
    # Gone (closed, or its process died): the next daemon takes over.
    owner.close()
    DaemonLock.scheduler(path).close()

from agentcg.daemon.state import State


def test_records_round_trip_and_drop(tmp_path):
    st = State(tmp_path)
    st.put("sessions", "s1", {"name": "s1", "memory": 1})
    st.put("calls", "c1", {"session": "s1", "token": "t"})
    st.put("calls", "c1", {"session": "s1", "token": "t2"})  # replaced atomically
    found, unreadable = st.load()
    assert found == {
        "sessions": {"s1": {"name": "s1", "memory": 1}},
        "calls": {"c1": {"session": "s1", "token": "t2"}},
    }
    assert unreadable == []
    st.drop("calls", "c1")
    st.drop("calls", "never-existed")
    assert st.load()[0]["calls"] == {}
    assert not list((st.dir / "calls").glob(".*.tmp"))


def test_torn_or_foreign_records_are_reported_not_fatal(tmp_path):
    st = State(tmp_path)
    st.put("sessions", "good", {"name": "good"})
    (st.dir / "sessions" / "torn.json").write_text('{"name": "to')
    (st.dir / "sessions" / "list.json").write_text("[1, 2]")
    found, unreadable = st.load()
    assert found["sessions"] == {"good": {"name": "good"}}
    assert sorted(p.rsplit("/", 1)[1] for p in unreadable) == ["list.json", "torn.json"]


def test_nothing_saved_yet(tmp_path):
    assert State(tmp_path / "absent").load() == ({"sessions": {}, "calls": {}}, [])

"""agentcg.client against the in-process fake daemon (tests/host/fake_daemon.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agentcg.client import Client
from agentcg.client.sdk import Gate
from agentcg.core.errors import AgentcgError
from agentcg.core.policy import Outcome
from tests.host.fake_daemon import FakeDaemon, wait_for

OUTCOME_KEYS = {f.name for f in dataclasses.fields(Outcome)}


@pytest.fixture
def client(daemon: FakeDaemon, sock_path: Path):
    with Client(str(sock_path), timeout=5) as c:
        yield c


def test_concurrent_requests_matched_by_id_out_of_order(daemon: FakeDaemon, client: Client):
    threads, per_thread = 20, 20
    daemon.echo_batch = threads  # every round's 20 answers come back reversed
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            results[t] = [client.request("echo", n=t * 1000 + i)["n"] for i in range(per_thread)]
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert not errors
    assert results == {t: [t * 1000 + i for i in range(per_thread)] for t in range(threads)}
    assert len(daemon.ops("echo")) == threads * per_thread


def test_id_null_error_reaches_every_waiter(daemon: FakeDaemon, client: Client):
    caught: list[AgentcgError] = []

    def hold() -> None:
        with pytest.raises(AgentcgError) as ei:
            client.request("hold")
        caught.append(ei.value)

    t = threading.Thread(target=hold)
    t.start()
    wait_for(lambda: daemon.ops("hold"))
    with pytest.raises(AgentcgError) as ei:
        client.request("kick")
    t.join(5)
    assert ei.value.code == "busy"
    assert [e.code for e in caught] == ["busy"]
    # ... and the client reconnects to the (still running) daemon afterwards.
    assert client.request("echo", n=5) == {"n": 5}


def test_busy_at_connect_is_reported_as_busy(daemon: FakeDaemon, sock_path: Path):
    daemon.refuse_all = True
    with pytest.raises(AgentcgError) as ei:
        Client(str(sock_path), timeout=5)
    assert ei.value.code == "busy"


def test_reconnect_reclaims_calls_and_drops_finished(daemon: FakeDaemon, sock_path: Path):
    with Client(str(sock_path), timeout=5) as client:
        alive = client.tool_call(label="pytest").begin()
        gone = client.tool_call(label="pip").begin()
        # "Restart": a new daemon on the same path that recovered only `alive`.
        sock_path.unlink()
        restarted = FakeDaemon(sock_path, calls={alive.id: alive.token})
        try:
            daemon.stop()
            assert client.request("echo", n=1) == {"n": 1}  # waits for the reconnect
            assert len(restarted.ops("hello")) == 1
            claimed = {m["args"]["call"] for m in restarted.ops("call.claim")}
            assert claimed == {alive.id, gone.id}
            assert alive.id in client._calls
            assert gone.id not in client._calls
            assert alive.end(0)["exit_status"] == 0
            assert "recovered" not in alive.outcome
            # `gone` finished while the daemon was down: its status survives, stats do not.
            outcome = gone.end(-9)
            assert set(outcome) == OUTCOME_KEYS | {"recovered"}
            assert outcome["recovered"] is True
            assert (outcome["call"], outcome["label"]) == (gone.id, "pip")
            assert (outcome["exit_status"], outcome["signal"]) == (None, 9)
            assert outcome["advice"] is None and outcome["peak_memory"] == 0
        finally:
            restarted.stop()


def test_end_not_found_without_a_restart_stays_an_error(daemon: FakeDaemon, client: Client):
    # On the connection that began it, not_found means the call really ended
    # (another end, session.close): no made-up outcome.
    call = client.tool_call(label="pytest").begin()
    del daemon.calls[call.id]
    with pytest.raises(AgentcgError) as ei:
        call.end(-9)
    assert ei.value.code == "not_found" and call.outcome is None


def test_popen_begins_and_attaches_its_waiting_child_in_one_request(
    daemon: FakeDaemon, client: Client
):
    with client.tool_call(label="true") as call:
        assert not daemon.ops("call.begin")  # a `with` block begins at the first popen
        proc = call.popen(["/bin/true"])
        assert proc.wait(5) == 0
    assert daemon.attach_pids == [proc.pid] and not daemon.ops("call.attach")
    [(conn_no, begin)] = [(n, m) for n, m in daemon.received if m["op"] == "call.begin"]
    assert conn_no == 1 and begin["args"] == {"intent": {"label": "true"}, "pid": proc.pid}
    assert call._id in daemon.ops("call.end")[0]["args"]["call"]
    assert call.outcome is not None and call.outcome["exit_status"] == 0
    assert client._calls == {} and client._waiting == {}


def test_reading_the_id_begins_the_call_and_popen_then_attaches(daemon: FakeDaemon, client: Client):
    with client.tool_call(label="true") as call:
        began = call.id
        assert [m["args"] for m in daemon.ops("call.begin")] == [{"intent": {"label": "true"}}]
        proc = call.popen(["/bin/true"])
        assert proc.wait(5) == 0
    assert call.id == began and len(daemon.ops("call.begin")) == 1
    [attach] = daemon.ops("call.attach")
    assert attach["args"] == {"call": began, "token": call.token, "pid": proc.pid}


def test_threads_running_processes_in_a_call_not_begun_yet_begin_it_once(
    daemon: FakeDaemon, client: Client
):
    procs: list[subprocess.Popen[bytes]] = []
    with client.tool_call(label="true") as call:
        threads = [
            threading.Thread(target=lambda: procs.append(call.popen(["/bin/true"])))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert [p.wait(5) for p in procs] == [0, 0, 0, 0]
        assert call.began
    assert len(daemon.ops("call.begin")) == 1 and len(daemon.ops("call.attach")) == 3
    assert sorted(daemon.attach_pids) == sorted(p.pid for p in procs)
    assert len(daemon.ops("call.end")) == 1 and client._calls == {}


def test_a_refused_combined_begin_raises_and_runs_nothing(
    daemon: FakeDaemon, client: Client, tmp_path: Path, capfd: pytest.CaptureFixture[str]
):
    daemon.begin_refusal = AgentcgError("limit_exceeded", "session 's' is full")
    ran = tmp_path / "ran"
    with client.tool_call() as call, pytest.raises(AgentcgError) as ei:
        call.popen(["/bin/touch", str(ran)])
    assert ei.value.code == "limit_exceeded" and "is full" in ei.value.message
    assert not ran.exists() and call._id == "" and call.outcome is None
    assert "could not place" not in capfd.readouterr().err  # the child exits quietly
    assert not daemon.ops("call.end") and client._waiting == {}
    daemon.begin_refusal = None
    assert client.tool_call().run(["/bin/true"]).returncode == 0  # the connection still works


def test_a_combined_begin_without_an_answer_raises(daemon: FakeDaemon, sock_path: Path):
    daemon.attach_mode = "drop"  # the daemon goes away between begin and its answer
    with Client(str(sock_path), timeout=1) as c, pytest.raises(AgentcgError) as ei:
        c.tool_call().popen([sys.executable, "-c", "print('ran')"], stdout=subprocess.PIPE)
    assert ei.value.code == "unavailable" and "nothing ran" in ei.value.message


def test_popen_has_its_waiting_child_attached_by_pid(daemon: FakeDaemon, client: Client):
    with client.tool_call(label="true").begin() as call:
        proc = call.popen(["/bin/true"])
        assert proc.wait(5) == 0
        call.end(proc.returncode)
    assert daemon.attach_pids == [proc.pid]
    [(conn_no, attach)] = [(n, m) for n, m in daemon.received if m["op"] == "call.attach"]
    assert {n for n, _ in daemon.received} == {1} and conn_no == 1  # no second connection
    assert attach["args"] == {"call": call.id, "token": call.token, "pid": proc.pid}


def test_in_a_pid_namespace_the_child_attaches_itself(daemon: FakeDaemon, sock_path: Path):
    # The daemon sees another pid for us than we do (a container's pid namespace): our
    # child's pid would mean nothing to it, so the child connects and attaches itself.
    daemon.peer_pid_shift = 1000
    with Client(str(sock_path), timeout=5) as c, c.tool_call() as call:
        proc = call.popen(["/bin/true"])
        assert proc.wait(5) == 0
    assert daemon.attach_pids == [proc.pid]
    [(conn_no, attach)] = [(n, m) for n, m in daemon.received if m["op"] == "call.attach"]
    assert conn_no != 1 and attach["args"] == {"call": call.id, "token": call.token}


def test_with_a_request_pending_the_child_attaches_itself(daemon: FakeDaemon, sock_path: Path):
    # The daemon answers a connection's requests in order: behind a pending request
    # (here one never answered) the attach would wait, so the child connects itself.
    with Client(str(sock_path), timeout=2) as c, c.tool_call() as call:
        errors: list[AgentcgError] = []

        def hold() -> None:
            try:
                c.request("hold")
            except AgentcgError as e:
                errors.append(e)

        held = threading.Thread(target=hold)
        held.start()
        wait_for(lambda: daemon.ops("hold"))
        proc = call.popen(["/bin/true"])
        assert proc.wait(5) == 0
        held.join(10)
    assert daemon.attach_pids == [proc.pid]
    [(conn_no, attach)] = [(n, m) for n, m in daemon.received if m["op"] == "call.attach"]
    assert conn_no != 1 and attach["args"] == {"call": call.id, "token": call.token}
    assert not held.is_alive() and [e.code for e in errors] == ["timeout"]


def test_after_a_request_timed_out_the_child_attaches_itself(daemon: FakeDaemon, sock_path: Path):
    # Given up on by the client, the request is still pending in the daemon.
    with Client(str(sock_path), timeout=0.5) as c, c.tool_call() as call:
        with pytest.raises(AgentcgError) as ei:
            c.request("hold")
        assert ei.value.code == "timeout" and c._waiting == {}
        proc = call.popen(["/bin/true"])
        assert proc.wait(5) == 0
    [(conn_no, attach)] = [(n, m) for n, m in daemon.received if m["op"] == "call.attach"]
    assert conn_no != 1 and attach["args"] == {"call": call.id, "token": call.token}


def test_popen_child_that_fails_before_the_gate_leaves_the_connection_usable(
    daemon: FakeDaemon, client: Client, tmp_path
):
    # chdir fails in the child before preexec_fn: nothing is attached, Popen raises,
    # and the gate gives back the send lock and its request id.
    with client.tool_call() as call, pytest.raises(FileNotFoundError):
        call.popen(["/bin/true"], cwd=tmp_path / "missing")
    assert daemon.attach_pids == []
    assert client._waiting == {}
    assert client.request("hello", version=1)["server"] == "fake"


@pytest.mark.parametrize("mode", ["hold", "drop"])
def test_attach_without_an_answer_runs_nothing(mode: str, daemon: FakeDaemon, sock_path: Path):
    # The daemon never answers (held: the child gives up after the client's timeout) or
    # goes away mid-attach (the reader wakes the gate): 126, nothing ran, no deadlock.
    daemon.attach_mode = mode
    with Client(str(sock_path), timeout=1) as c:
        call = c.tool_call().begin()
        proc = call.popen(
            [sys.executable, "-c", "print('ran')"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 126 and out == b""
        assert b"could not place the tool in its cgroup" in err
        assert not [w for w, _ in c._waiting.values() if isinstance(w, Gate)]


def test_refused_attach_exits_126_with_reason(daemon: FakeDaemon, client: Client):
    daemon.attach_ok = False
    with client.tool_call() as call:
        done = call.run([sys.executable, "-c", "print('ran')"], capture_output=True)
    assert done.returncode == 126
    assert done.stdout == b""
    assert b"could not place the tool in its cgroup" in done.stderr
    assert b"not a descendant" in done.stderr
    assert len(daemon.attach_pids) == 1  # it asked, was refused, and never ran
    assert call.outcome is not None and call.outcome["exit_status"] == 126


def test_run_capture_output_and_preexec_fn_refused(daemon: FakeDaemon, client: Client):
    with client.tool_call() as call:
        done = call.run(["/bin/echo", "hi"], capture_output=True)
        assert (done.returncode, done.stdout, done.stderr) == (0, b"hi\n", b"")
    with client.tool_call() as call, pytest.raises(TypeError, match="preexec_fn"):
        call.popen(["/bin/true"], preexec_fn=lambda: None)
    with client.tool_call() as call, pytest.raises(ValueError):
        call.run(["/bin/true"], capture_output=True, stdout=subprocess.DEVNULL)

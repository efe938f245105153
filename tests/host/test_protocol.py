import json

import pytest

from agentcg.core.errors import AgentcgError, NotFound
from agentcg.core.protocol import (
    EVENTS,
    OPS,
    PROTOCOL_VERSION,
    decode,
    encode,
    err,
    event,
    negotiate_version,
    ok,
    parse_request,
    validate_name,
)

CALL = "c0123456789ab"
TOKEN = "0123456789abcdef0123456789abcdef"


def frame(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def req(op, args=None, rid=1, **extra):
    obj = {"v": 1, "id": rid, "op": op, **extra}
    if args is not None:
        obj["args"] = args
    return parse_request(frame(obj))


def error_of(line: bytes, **kw) -> AgentcgError:
    with pytest.raises(AgentcgError) as ei:
        parse_request(line, **kw)
    return ei.value


def code_of(op, args, rid=7) -> tuple[str, object]:
    e = error_of(frame({"id": rid, "op": op, "args": args}))
    return e.code, e.request_id


# --- framing and JSON -------------------------------------------------------------------


def test_hello_parses():
    r = req("hello", {"version": 1, "client": "agentcg-cli 0.1"})
    assert (r.id, r.op, r.version) == (1, "hello", 1)
    assert r.args == {"version": 1, "client": "agentcg-cli 0.1"}
    assert r.spec is OPS["hello"]


def test_frame_without_newline_and_crlf_are_accepted():
    assert parse_request(b'{"id":"a","op":"list"}').op == "list"
    assert parse_request(b'{"id":"a","op":"list"}\r\n').id == "a"


def test_args_and_v_are_optional():
    r = parse_request(b'{"id":2,"op":"list"}\n')
    assert r.args == {} and r.version is None


def test_require_version_before_hello():
    e = error_of(b'{"id":2,"op":"list"}\n', require_version=True)
    assert e.code == "bad_request" and e.request_id == 2


@pytest.mark.parametrize("v", [0, 2, 99])
def test_other_envelope_versions_are_unsupported(v):
    e = error_of(frame({"v": v, "id": 1, "op": "list"}))
    assert e.code == "unsupported_version" and e.request_id == 1


@pytest.mark.parametrize("v", [True, "1", 1.0])
def test_envelope_version_must_be_int(v):
    assert error_of(frame({"v": v, "id": 1, "op": "list"})).code == "invalid_value"


def test_frame_too_large_counts_the_newline():
    body = b'{"id":1,"op":"list","args":{}}'
    pad = b" " * (100 - len(body) - 1)
    assert parse_request(body + pad + b"\n", max_frame=100).op == "list"
    assert error_of(body + pad + b" \n", max_frame=100).code == "frame_too_large"
    # Without a trailing newline the newline still counts.
    assert error_of(body + pad + b" ", max_frame=100).code == "frame_too_large"


def test_huge_frame_is_rejected_before_parsing():
    line = b'{"id":1,"op":"hello","args":{"client":"' + b"x" * 70000 + b'"}}\n'
    e = error_of(line)
    assert e.code == "frame_too_large" and e.request_id is None


@pytest.mark.parametrize(
    "line",
    [b"\n", b"   \n", b"", b'{"id":1,"op":"list"}\n{"id":2,"op":"list"}\n', b"\xff\xfe{}\n"],
)
def test_bad_frames(line):
    assert error_of(line).code == "bad_frame"


@pytest.mark.parametrize(
    "line",
    [
        b"{",
        b"{'id': 1}",
        b'{"id":1,"op":"list",}',
        b'{"id":NaN,"op":"list"}',
        b'{"id":1,"op":"list","args":{"x":Infinity}}',
        b'{"id":1,"id":2,"op":"list"}',
        b"[" * 100000,
    ],
)
def test_bad_json(line):
    e = error_of(line, max_frame=1 << 20)
    assert e.code == "bad_json" and e.request_id is None


@pytest.mark.parametrize("line", [b"[]", b"1", b'"hello"', b"null", b"true"])
def test_non_object_json_is_bad_request(line):
    assert error_of(line).code == "bad_request"


def test_deeply_nested_args_do_not_crash():
    nested = b'{"id":1,"op":"call.begin","args":{"intent":' + b"[" * 50000 + b"]" * 50000 + b"}}"
    assert error_of(nested, max_frame=1 << 20).code in ("bad_json", "invalid_value")


# --- envelope -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"op": "list"}, "bad_request"),
        ({"id": None, "op": "list"}, "bad_request"),
        ({"id": True, "op": "list"}, "bad_request"),
        ({"id": 1.5, "op": "list"}, "bad_request"),
        ({"id": [1], "op": "list"}, "bad_request"),
        ({"id": "x" * 65, "op": "list"}, "bad_request"),
        ({"id": "a\nb", "op": "list"}, "bad_request"),
        ({"id": 2**63, "op": "list"}, "bad_request"),
    ],
)
def test_unreadable_ids_give_null_request_id(obj, code):
    e = error_of(frame(obj))
    assert e.code == code and e.request_id is None


def test_valid_ids():
    assert req("list", rid="x" * 64).id == "x" * 64
    assert req("list", rid=-(2**63) + 1).id == -(2**63) + 1
    assert req("list", rid="ümlaut").id == "ümlaut"


def test_errors_after_the_id_carry_it():
    e = error_of(frame({"id": "abc", "op": "bogus"}))
    assert e.code == "unknown_op" and e.request_id == "abc"
    assert "session.open" in e.message


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"id": 1}, "bad_request"),
        ({"id": 1, "op": None}, "bad_request"),
        ({"id": 1, "op": 5}, "bad_request"),
        ({"id": 1, "op": "LIST"}, "unknown_op"),
        ({"id": 1, "op": "list", "extra": 1}, "unknown_field"),
        ({"id": 1, "op": "list", "args": []}, "invalid_value"),
        ({"id": 1, "op": "list", "args": "x"}, "invalid_value"),
        ({"id": 1, "op": "list", "args": {"x": 1}}, "unknown_field"),
    ],
)
def test_envelope_errors(obj, code):
    e = error_of(frame(obj))
    assert (e.code, e.request_id) == (code, 1)


# --- per-op argument schemas ----------------------------------------------------------


def test_every_op_is_in_the_table():
    assert set(OPS) == {
        "hello",
        "session.open",
        "session.close",
        "session.status",
        "call.begin",
        "call.attach",
        "call.end",
        "call.status",
        "call.claim",
        "list",
        "stats",
    }
    assert [name for name, spec in OPS.items() if spec.admin] == ["list"]


def test_stats_takes_an_optional_session():
    assert parse_request(frame({"v": 1, "id": 1, "op": "stats"})).args == {}
    r = parse_request(frame({"v": 1, "id": 1, "op": "stats", "args": {"session": "task-1"}}))
    assert r.args == {"session": "task-1"}
    assert error_of(frame({"id": 1, "op": "stats", "args": {"session": "../x"}})).code == (
        "invalid_value"
    )
    assert error_of(frame({"id": 1, "op": "stats", "args": {"all": True}})).code == "unknown_field"


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("hello", {}),
        ("session.close", {}),
        ("session.status", {}),
        ("call.begin", {"session": "s"}),
        ("call.attach", {"call": CALL}),
        ("call.attach", {"token": TOKEN}),
        ("call.end", {"call": CALL}),
        ("call.status", {}),
        ("call.claim", {"token": TOKEN}),
        ("call.end", {"call": CALL, "token": None}),
    ],
)
def test_missing_required_args(op, args):
    assert code_of(op, args) == ("bad_request", 7)


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("hello", {"version": True}),
        ("hello", {"version": "1"}),
        ("hello", {"version": 1.0}),
        ("hello", {"version": 0}),
        ("hello", {"version": 1, "client": 5}),
        ("hello", {"version": 1, "client": "x" * 129}),
        ("hello", {"version": 1, "client": "bad\x1b[31m"}),
        ("session.open", {"memory": True}),
        ("session.open", {"memory": 1.5}),
        ("session.open", {"memory": "2G junk"}),
        ("session.open", {"memory": "-1G"}),
        ("session.open", {"memory": 0}),
        ("session.open", {"cpu": True}),
        ("session.open", {"cpu": 0}),
        ("session.open", {"cpu": -1}),
        ("session.open", {"cpu": "2"}),
        ("session.open", {"pids": True}),
        ("session.open", {"pids": 0}),
        ("session.open", {"pids": 10.0}),
        ("session.open", {"max_calls": False}),
        ("session.open", {"adopt": 1}),
        ("session.open", {"adopt": "yes"}),
        ("session.open", {"name": "../x"}),
        ("session.open", {"name": "a/b"}),
        ("session.open", {"name": ".hidden"}),
        ("session.open", {"name": "Caps"}),
        ("session.open", {"name": "ß"}),
        ("session.open", {"name": ""}),
        ("session.open", {"name": "a" * 64}),
        ("session.open", {"name": "ok\n"}),
        ("session.close", {"session": 5}),
        ("session.status", {"session": "../../etc"}),
        ("call.begin", {"intent": "memory=high"}),
        ("call.begin", {"intent": []}),
        ("call.attach", {"call": "c0123", "token": TOKEN}),
        ("call.attach", {"call": "C0123456789AB", "token": TOKEN}),
        ("call.attach", {"call": CALL, "token": TOKEN.upper()}),
        ("call.attach", {"call": CALL, "token": TOKEN + "0"}),
        ("call.attach", {"call": CALL, "token": TOKEN, "pid": 0}),
        ("call.attach", {"call": CALL, "token": TOKEN, "pid": -1}),
        ("call.attach", {"call": CALL, "token": TOKEN, "pid": "12"}),
        ("call.attach", {"call": CALL, "token": TOKEN, "pid": True}),
        ("call.attach", {"call": CALL, "token": TOKEN, "pid": 2**22 + 1}),
        ("call.end", {"call": CALL, "token": TOKEN, "exit_status": 256}),
        ("call.end", {"call": CALL, "token": TOKEN, "exit_status": -65}),
        ("call.end", {"call": CALL, "token": TOKEN, "exit_status": True}),
        ("call.end", {"call": CALL, "token": TOKEN, "exit_status": "0"}),
        ("call.status", {"call": f"{CALL}/../x"}),
    ],
)
def test_invalid_values(op, args):
    assert code_of(op, args) == ("invalid_value", 7)


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("hello", {"version": 1, "session": "s"}),
        ("session.open", {"memroy": "1G"}),
        ("call.attach", {"call": CALL, "token": TOKEN, "cgroup": "/"}),
        ("list", {"all": True}),
    ],
)
def test_unknown_args(op, args):
    assert code_of(op, args) == ("unknown_field", 7)


def test_session_open_normalises_sizes_and_keeps_types():
    r = req(
        "session.open",
        {"name": "agent-1", "memory": "1.5G", "cpu": 2, "pids": 100, "max_calls": 8, "adopt": True},
    )
    assert r.args == {
        "name": "agent-1",
        "memory": 1536 * 1024**2,
        "cpu": 2.0,
        "pids": 100,
        "max_calls": 8,
        "adopt": True,
    }
    assert isinstance(r.args["cpu"], float)


def test_null_optional_args_are_dropped():
    assert req("session.open", {"name": None, "memory": None}).args == {}


def test_call_ops():
    r = req("call.end", {"call": CALL, "token": TOKEN, "exit_status": -9})
    assert r.args == {"call": CALL, "token": TOKEN, "exit_status": -9}
    r = req("call.begin", {"intent": {"memory": "high", "anything": 1}})
    # intent contents are checked by intent.parse_intent, which knows the config
    assert r.args == {"intent": {"memory": "high", "anything": 1}}


def test_validate_name():
    assert validate_name("session", "a.b_c-1") == "a.b_c-1"
    assert validate_name("label", "x" * 63) == "x" * 63
    for bad in ["..", "../x", "a/b", "/abs", "-x", "_x", "x y", "é", "x\x00", None, 5, "ab\n"]:
        with pytest.raises(AgentcgError) as ei:
            validate_name("session", bad)
        assert ei.value.code == "invalid_value"
        assert "\n" not in ei.value.message


# --- responses and events -------------------------------------------------------------


def test_encode_is_compact_ascii_ndjson():
    data = encode(ok(3, {"name": "é\n", "n": 1}))
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert data == b'{"id":3,"ok":true,"result":{"name":"\\u00e9\\n","n":1}}\n'
    assert decode(data) == {"id": 3, "ok": True, "result": {"name": "é\n", "n": 1}}


def test_encode_rejects_nan():
    with pytest.raises(ValueError):
        encode({"x": float("nan")})


def test_err_and_roundtrip():
    e = NotFound("session 'a' does not exist; open it first")
    d = decode(encode(err(None, e)))
    assert d == {
        "id": None,
        "ok": False,
        "error": {"code": "not_found", "message": "session 'a' does not exist; open it first"},
    }
    back = AgentcgError.from_dict(d["error"])
    assert isinstance(back, NotFound) and back.code == "not_found"


def test_event():
    assert event("oom", "c0123456789ab", {"peak": 5}) == {
        "event": "oom",
        "call": "c0123456789ab",
        "data": {"peak": 5},
    }
    assert {
        "limit_raised",
        "throttled",
        "released",
        "frozen",
        "thawed",
        "killed",
        "oom",
        "ended",
        "waiting",
    } == EVENTS
    assert event("waiting", None, {"position": 1})["call"] is None
    with pytest.raises(ValueError):
        event("exploded", "c0123456789ab", {})


def test_version_negotiation():
    assert PROTOCOL_VERSION == 1
    assert negotiate_version(1) == 1
    assert negotiate_version(7) == 1


def test_error_codes_and_messages():
    with pytest.raises(ValueError):
        AgentcgError("no_such_code", "x")
    e = AgentcgError("busy", "line one\nline two\t")
    assert e.message == "line one line two"
    assert str(e) == "busy: line one line two"
    assert len(AgentcgError("internal", "x" * 5000).message) == 1000


@pytest.mark.parametrize(
    "d", [{"code": "from_the_future", "message": "m"}, {"code": 5}, "oops", None, {}]
)
def test_from_dict_tolerates_unknown_or_malformed_errors(d):
    assert AgentcgError.from_dict(d).code == "internal"

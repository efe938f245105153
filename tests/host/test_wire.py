"""agentcg.client.wire: json.dumps/json.loads without the json package."""

from __future__ import annotations

import json
import math

import pytest

from agentcg.client import wire

FRAMES = [
    {"v": 1, "id": 7, "op": "call.begin", "args": {"intent": {"memory": "2G", "cpu": 1.5}}},
    {"s": 'quote " backslash \\ newline \n tab \t nul \x00 é ☃ 𝄞', "n": None, "t": True},
    {"floats": [0.1, 1e300, -0.0, 3.0, 12345678901234567890], "f": False, "e": {}, "l": []},
    ["top-level", "list", 1, (2, 3)],
    "a string",
    42,
]


@pytest.mark.parametrize("obj", FRAMES)
def test_dumps_is_json_dumps_and_loads_reads_it_back(obj):
    text = wire.dumps(obj)
    assert text == json.dumps(obj)
    assert wire.loads(text.encode()) == json.loads(text)
    compact = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    assert wire.loads(b" \t" + compact + b"\r\n") == json.loads(compact)


def test_nan_and_infinity_both_ways():
    obj = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
    assert wire.dumps(obj) == json.dumps(obj)
    back = wire.loads(wire.dumps(obj).encode())
    assert math.isnan(back["nan"]) and back["inf"] == math.inf and back["-inf"] == -math.inf


def test_a_value_json_cannot_encode_is_a_type_error():
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        wire.dumps({"x": object()})


@pytest.mark.parametrize(
    "data", [b"", b"  \n", b'{"a": 1} {"b": 2}', b'{"a":', b"nul", b'"\x01"', b"\xff{}"]
)
def test_anything_else_is_a_value_error(data):
    with pytest.raises(ValueError):
        json.loads(data)
    with pytest.raises(ValueError):
        wire.loads(data)

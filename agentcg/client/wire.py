"""JSON for the client's NDJSON frames, straight from CPython's _json accelerator.

The `json` package is the same C code behind a Python layer that imports `re` and
compiles its regular expressions at import: ~6 ms of every `agentcg run` start-up
(docs/benchmarks.md), for frames the accelerator encodes and parses by itself.
dumps() gives what json.dumps() gives with its defaults; loads() accepts what
json.loads() accepts from UTF-8, and raises ValueError on anything else.
"""

from __future__ import annotations

from _json import encode_basestring_ascii, make_encoder, make_scanner

# Annotations only (never evaluated): importing typing would slow `agentcg run`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"


def _not_serializable(o: object) -> object:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def dumps(obj: object) -> str:
    """json.dumps(obj): ASCII, ", " and ": " separators, NaN and Infinity allowed."""
    # A fresh encoder per call: its circular-reference markers are not shared by threads.
    encode = make_encoder(
        {}, _not_serializable, encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    return "".join(encode(obj, 0))


class _Context:
    """What the scanner reads from a json.JSONDecoder with its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"),
        "Infinity": float("inf"),
        "NaN": float("nan"),
    }.__getitem__


# typeshed says the context is a make_scanner; it is any object with these attributes.
_scan = make_scanner(_Context())  # type: ignore[arg-type]


def loads(data: bytes) -> Any:
    """json.loads(data) for one UTF-8 document; ValueError if it is not one."""
    text = data.decode()
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        obj, end = _scan(text, start)
    except StopIteration as e:
        raise ValueError(f"expecting a JSON value at character {e.value}") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return obj

import pytest

from agentcg.core.records import cgroup_path_ok, check_record


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/", True),
        ("/docker/abc", True),
        ("/user.slice/user-1000.slice/session-2.scope", True),
        ("", False),
        ("docker/abc", False),
        ("/docker/../etc", False),
        ("/docker/./x", False),
        ("/docker//x", False),
        ("/docker/x/", False),
        ("/a\0b", False),
        ("/a\nb", False),
        ("/" + "a" * 5000, False),
        (None, False),
        (["/"], False),
    ],
)
def test_cgroup_paths(path: object, ok: bool) -> None:
    assert cgroup_path_ok(path) is ok


def test_record_kinds_and_names() -> None:
    assert check_record("nope", "x", {}) == "unknown record kind 'nope'"
    assert check_record("calls", "not-a-call", {}) == "not a call id"
    assert check_record("anchors", "a1", {"path": "/docker/x"}) is None
    assert check_record("anchors", "a1", {"path": "/docker/../x"}) is not None
    assert check_record("anchors", "a1", {"path": "/x", "more": 1}) is not None

import pytest

from agentcg.core.config import Config, load_config
from agentcg.core.errors import AgentcgError
from agentcg.core.intent import Intent, parse_intent, parse_size

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4
CFG = Config.default()


def config_with(tmp_path, overrides) -> Config:
    # An explicit empty file keeps the host's /etc/agentcg out of the test.
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    return load_config(empty, overrides)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 * MiB),
        ("2G", 2 * GiB),
        ("1.5GiB", 1536 * MiB),
        ("300MB", 300_000_000),
        ("1GB", 10**9),
        ("1kB", 1000),
        ("4096", 4096),
        ("4096B", 4096),
        ("1K", KiB),
        ("1Ki", KiB),
        ("2Gi", 2 * GiB),
        ("2g", 2 * GiB),
        ("512mib", 512 * MiB),
        ("1T", TiB),
        ("1P", 2**50),
        (" 1 G ", GiB),
        ("0.5K", 512),
        ("1.3K", 1332),  # fractional bytes round up
        (1, 1),
        (123456789, 123456789),
        (2**50, 2**50),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        True,
        False,
        1.0,
        1.5,
        0,
        -1,
        "0",
        "0G",
        "-1G",
        "-512M",
        "",
        " ",
        "G",
        "1.5",
        "1.5B",
        "1e9",
        "0x10",
        "1_000",
        "1,5G",
        "inf",
        "nan",
        "2G junk",
        "2GG",
        "2 GiBs",
        "1i",
        "1iB",
        "1X",
        "\u0661\u0662",  # Arabic-Indic digits: digits to str.isdigit, not to us
        "\uff11G",  # fullwidth digit one
        "1" * 17,
        2**50 + 1,
        "1025T",
        "2P",
        None,
        [1],
        {"G": 1},
    ],
)
def test_parse_size_rejects(bad):
    with pytest.raises(AgentcgError) as ei:
        parse_size(bad, "memory")
    assert ei.value.code == "invalid_value"
    assert ei.value.message.startswith("memory")


def test_defaults_are_undeclared():
    assert parse_intent({}, CFG) == Intent(
        memory=None,
        memory_class=None,
        priority="normal",
        latency_sensitive=False,
        cpu=None,
        pids=None,
        timeout=None,
        label="tool",
    )


def test_full_intent():
    i = parse_intent(
        {
            "memory": "high",
            "priority": "critical",
            "latency_sensitive": True,
            "cpu": 1.5,
            "pids": 256,
            "timeout": 60,
            "label": "pytest",
        },
        CFG,
    )
    assert i == Intent(4 * GiB, "high", "critical", True, 1.5, 256, 60.0, "pytest")
    assert isinstance(i.timeout, float)


@pytest.mark.parametrize(("cls", "size"), [("low", 256 * MiB), ("medium", GiB), ("high", 4 * GiB)])
def test_size_classes(cls, size):
    i = parse_intent({"memory": cls}, CFG)
    assert (i.memory, i.memory_class) == (size, cls)


def test_explicit_size_has_no_class():
    i = parse_intent({"memory": "768M"}, CFG)
    assert (i.memory, i.memory_class) == (768 * MiB, None)
    assert parse_intent({"memory": 1 << 20}, CFG).memory == 1 << 20


def test_configured_classes_and_priorities(tmp_path):
    cfg = config_with(
        tmp_path,
        {
            "size_classes.huge": "16G",
            "priorities.batch": {"cpu_weight": 10, "memory_low_fraction": 0, "kill_order": -5},
        },
    )
    assert parse_intent({"memory": "huge", "priority": "batch"}, cfg).memory == 16 * GiB
    with pytest.raises(AgentcgError):
        parse_intent({"memory": "huge"}, CFG)


def test_nulls_mean_not_given():
    assert parse_intent(
        {"memory": None, "priority": None, "label": None, "latency_sensitive": None}, CFG
    ) == parse_intent({}, CFG)


@pytest.mark.parametrize(
    ("d", "code"),
    [
        ("memory=high", "invalid_value"),
        ([], "invalid_value"),
        ({"mem": "1G"}, "unknown_field"),
        ({"memory": "1G", "command": "rm -rf /"}, "unknown_field"),
        ({"memory": "huge"}, "invalid_value"),
        ({"memory": "HIGH"}, "invalid_value"),
        ({"memory": "$(reboot)"}, "invalid_value"),
        ({"memory": "1G; reboot"}, "invalid_value"),
        ({"memory": 1.5}, "invalid_value"),
        ({"memory": True}, "invalid_value"),
        ({"memory": 0}, "invalid_value"),
        ({"priority": "urgent"}, "invalid_value"),
        ({"priority": 1}, "invalid_value"),
        ({"latency_sensitive": 1}, "invalid_value"),
        ({"latency_sensitive": "true"}, "invalid_value"),
        ({"cpu": True}, "invalid_value"),
        ({"cpu": 0}, "invalid_value"),
        ({"cpu": -2}, "invalid_value"),
        ({"cpu": 5000}, "invalid_value"),
        ({"cpu": "2"}, "invalid_value"),
        ({"pids": True}, "invalid_value"),
        ({"pids": 0}, "invalid_value"),
        ({"pids": 2.0}, "invalid_value"),
        ({"pids": 10**9}, "invalid_value"),
        ({"timeout": 0}, "invalid_value"),
        ({"timeout": -1}, "invalid_value"),
        ({"timeout": True}, "invalid_value"),
        ({"timeout": 86401}, "invalid_value"),
        ({"label": "../etc"}, "invalid_value"),
        ({"label": "a/b"}, "invalid_value"),
        ({"label": "PyTest"}, "invalid_value"),
        ({"label": "tést"}, "invalid_value"),
        ({"label": ""}, "invalid_value"),
        ({"label": 3}, "invalid_value"),
    ],
)
def test_bad_intents(d, code):
    with pytest.raises(AgentcgError) as ei:
        parse_intent(d, CFG)
    assert ei.value.code == code


def test_error_messages_name_the_field_and_the_options():
    with pytest.raises(AgentcgError) as ei:
        parse_intent({"memory": "huge"}, CFG)
    assert "intent.memory" in ei.value.message
    assert "high, low, medium" in ei.value.message
    with pytest.raises(AgentcgError) as ei:
        parse_intent({"priority": "urgent"}, CFG)
    assert "critical, high, low, normal" in ei.value.message


def test_timeout_bound_follows_config(tmp_path):
    cfg = config_with(tmp_path, {"call.max_timeout_s": 10})
    assert parse_intent({"timeout": 10}, cfg).timeout == 10.0
    with pytest.raises(AgentcgError, match="at most 10"):
        parse_intent({"timeout": 10.5}, cfg)


def test_float_nan_and_inf_are_rejected():
    for v in (float("nan"), float("inf")):
        with pytest.raises(AgentcgError):
            parse_intent({"cpu": v}, CFG)

import dataclasses
import re
from pathlib import Path

import pytest

from agentcg.core.config import (
    DEFAULT_PATH,
    AdminConfig,
    CallConfig,
    Config,
    DaemonConfig,
    Grant,
    Priority,
    SessionConfig,
    load_config,
)
from agentcg.core.errors import AgentcgError, ConfigError
from agentcg.core.escalation import MemoryConfig

MiB, GiB = 1024**2, 1024**3
REPO = Path(__file__).resolve().parents[2]


def load(tmp_path, text: str, overrides=None) -> Config:
    p = tmp_path / "agentcg.toml"
    p.write_text(text)
    return load_config(p, overrides)


def error(tmp_path, text: str, overrides=None) -> str:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text, overrides)
    assert ei.value.code == "invalid_value"
    assert isinstance(ei.value, AgentcgError)
    assert "\n" not in ei.value.message
    return ei.value.message


def test_defaults_match_the_contract():
    c = Config.default()
    assert c.daemon == DaemonConfig(
        root=Path("/sys/fs/cgroup/agentcg"),
        socket=Path("/run/agentcg/agentcg.sock"),
        socket_group=None,
        socket_mode=0o660,
        state_dir=Path("/var/lib/agentcg"),
        max_frame=65536,
        max_connections=1024,
        max_requests_per_second=200,
        idle_timeout_s=300,
        frame_timeout_s=10,
        reclaim_grace_s=15,
        admin_connections=16,
        max_sessions=1024,
        max_calls=4096,
        protection_fraction=0.25,
    )
    assert c.admin == AdminConfig(uids=(0,), gids=())
    assert dict(c.size_classes) == {"low": 256 * MiB, "medium": GiB, "high": 4 * GiB}
    assert dict(c.priorities) == {
        "critical": Priority(1000, 1.0, 30, memory_min_fraction=0.5, oom_score_adj=300),
        "high": Priority(400, 0.5, 20, memory_min_fraction=0.25, oom_score_adj=500),
        "normal": Priority(100, 0.0, 10, oom_score_adj=800),
        "low": Priority(25, 0.0, 0, oom_score_adj=1000),
    }
    assert c.session == SessionConfig(None, None, 64, 4096)
    assert c.session.memory_overcommit == 2.0
    assert c.memory == MemoryConfig(True, 16 * MiB, 32 * MiB, 0.05, 20_000, 200_000)
    assert (c.session.max_memory_fraction, c.session.max_pids) == (0.5, 32768)
    assert dict(c.grants) == {}
    assert c.call == CallConfig(1.25, "medium", "normal", None, 86400)
    assert Path("/etc/agentcg/agentcg.toml") == DEFAULT_PATH


def test_empty_file_is_the_defaults(tmp_path):
    assert load(tmp_path, "") == Config.default()


def test_config_is_immutable():
    c = Config.default()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.daemon.max_frame = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.size_classes["low"] = 1  # type: ignore[index]


def test_example_file_is_the_defaults(tmp_path):
    # deploy/agentcg.toml lists every key commented out ("#key = default"); loading it
    # as is and with every key uncommented must both give the built-in defaults.
    text = (REPO / "deploy" / "agentcg.toml").read_text()
    assert load(tmp_path, text) == Config.default()
    uncommented = re.sub(r"(?m)^#([a-z_]+ = )", r"\1", text)
    assert uncommented != text
    assert load(tmp_path, uncommented) == Config.default()
    for section, cls in [
        ("daemon", DaemonConfig),
        ("session", SessionConfig),
        ("call", CallConfig),
        ("admin", AdminConfig),
        ("memory", MemoryConfig),
    ]:
        for f in dataclasses.fields(cls):
            assert re.search(rf"(?ms)^\[{section}\].*?^#{f.name} = ", text), f"{section}.{f.name}"


def test_full_file(tmp_path):
    c = load(
        tmp_path,
        """
[daemon]
root = "/sys/fs/cgroup/agents/"
socket = "/run/x/agentcg.sock"
socket_group = "agents"
socket_mode = "0640"
state_dir = "/var/lib/agentcg"
max_frame = 131072
max_connections = 10
max_requests_per_second = 50
idle_timeout_s = 60
frame_timeout_s = 2.5
reclaim_grace_s = 0

[admin]
uids = [0, 1000]
gids = [27]

[size_classes]
low = "128M"
huge = 17179869184

[priorities.batch]
cpu_weight = 10
memory_low_fraction = 0
kill_order = -10

[session]
default_memory = "8G"
max_memory = "32G"
max_calls = 16
default_pids = 512

[call]
memory_headroom = 1.5
default_memory_class = "low"
default_priority = "batch"
default_timeout_s = 600
max_timeout_s = 3600
""",
    )
    assert c.daemon.root == Path("/sys/fs/cgroup/agents")
    assert c.daemon.socket_group == "agents"
    assert c.daemon.socket_mode == 0o640
    assert c.daemon.frame_timeout_s == 2.5 and c.daemon.reclaim_grace_s == 0
    assert c.admin == AdminConfig((0, 1000), (27,))
    assert c.size_classes == {"low": 128 * MiB, "medium": GiB, "high": 4 * GiB, "huge": 16 * GiB}
    assert c.priorities["batch"] == Priority(10, 0.0, -10)
    assert c.priorities["critical"] == Config.default().priorities["critical"]
    assert c.session == SessionConfig(8 * GiB, 32 * GiB, 16, 512)
    assert c.call == CallConfig(1.5, "low", "batch", 600.0, 3600.0)


def test_memory_section_and_priority_extras(tmp_path):
    c = load(
        tmp_path,
        """
[memory]
bpf = false
step = "8M"
thaw_room = "64M"
recheck_s = 0.2
psi_stall_us = 50000
psi_window_us = 500000

[session]
memory_overcommit = 1.5

[priorities.batch]
cpu_weight = 10
memory_low_fraction = 0.5
memory_min_fraction = 0.1
kill_order = -10
oom_score_adj = 900
""",
    )
    assert c.memory == MemoryConfig(False, 8 * MiB, 64 * MiB, 0.2, 50_000, 500_000)
    assert c.session.memory_overcommit == 1.5
    assert c.priorities["batch"] == Priority(10, 0.5, -10, 0.1, 900)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[session]\nmemory_overcommit = 0.5", "session.memory_overcommit must be"),
        ("[memory]\nbpf = 1", "memory.bpf must be true or false"),
        ("[memory]\npsi_window_us = 100", "memory.psi_window_us must be"),
        (
            "[priorities.x]\ncpu_weight = 1\nmemory_low_fraction = 0.1\nkill_order = 0\n"
            "memory_min_fraction = 0.2",
            "priorities.x.memory_min_fraction (0.2) is above its memory_low_fraction",
        ),
        (
            "[priorities.x]\ncpu_weight = 1\nmemory_low_fraction = 0\nkill_order = 0\n"
            "oom_score_adj = -1000",
            "priorities.x.oom_score_adj must be",
        ),
    ],
)
def test_memory_errors(tmp_path, text, words):
    assert words in error(tmp_path, text)


def test_grants(tmp_path):
    c = load(
        tmp_path,
        '[grants]\nhigh = { uids = [1000], containers = ["web1"] }\nlow = {}\n',
    )
    assert dict(c.grants) == {"high": Grant(uids=(1000,), containers=("web1",))}
    assert "grants.turbo names no priority" in error(tmp_path, "[grants]\nturbo = {}\n")
    assert "grants.high.users" in error(tmp_path, "[grants]\nhigh = { users = [1] }\n")
    assert "grants.high.containers" in error(
        tmp_path, '[grants]\nhigh = { containers = ["a\\nb"] }\n'
    )


@pytest.mark.parametrize(("raw", "mode"), [("0o660", 0o660), ("0660", 0o660), ("600", 0o600)])
def test_socket_mode_strings(tmp_path, raw, mode):
    assert load(tmp_path, f'[daemon]\nsocket_mode = "{raw}"\n').daemon.socket_mode == mode


def test_socket_mode_toml_octal_int(tmp_path):
    assert load(tmp_path, "[daemon]\nsocket_mode = 0o600\n").daemon.socket_mode == 0o600


@pytest.mark.parametrize("raw", ["660", "0o1777", '"0999"', '"rw-rw----"', "true", '"0x1b6"', "-1"])
def test_socket_mode_rejects(tmp_path, raw):
    msg = error(tmp_path, f"[daemon]\nsocket_mode = {raw}\n")
    assert msg.startswith('config: daemon.socket_mode must be an octal int like 0o660 or "0660"')


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[daemon]\nsockt = 1\n", "daemon.sockt"),
        ("[deamon]\n", "deamon"),
        ("typo = 1\n", "typo"),
        ("[admin]\nusers = [0]\n", "admin.users"),
        (
            "[priorities.normal]\ncpu_weight = 1\nmemory_low_fraction = 0\nkill_order = 0\nx = 1\n",
            "priorities.normal.x",
        ),
        ("[session]\nmax_call = 3\n", "session.max_call"),
        ("[call]\nheadroom = 2\n", "call.headroom"),
    ],
)
def test_unknown_keys_are_named(tmp_path, text, key):
    msg = error(tmp_path, text)
    assert f"unknown key {key};" in msg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[daemon]\nroot = "relative/path"\n', "daemon.root"),
        ('[daemon]\nroot = "/sys/fs/cgroup/../../etc"\n', "daemon.root"),
        ("[daemon]\nroot = 5\n", "daemon.root"),
        ('[daemon]\nsocket = "/' + "s" * 120 + '"\n', "daemon.socket"),
        ('[daemon]\nsocket_group = "bad group"\n', "daemon.socket_group"),
        ("[daemon]\nsocket_group = 27\n", "daemon.socket_group"),
        ('[daemon]\nstate_dir = "run"\n', "daemon.state_dir"),
        ("[daemon]\nmax_frame = true\n", "daemon.max_frame"),
        ("[daemon]\nmax_frame = 65536.0\n", "daemon.max_frame"),
        ('[daemon]\nmax_frame = "64K"\n', "daemon.max_frame"),
        ("[daemon]\nmax_frame = 100\n", "daemon.max_frame"),
        ("[daemon]\nmax_connections = 0\n", "daemon.max_connections"),
        ("[daemon]\nmax_requests_per_second = -1\n", "daemon.max_requests_per_second"),
        ("[daemon]\nidle_timeout_s = 0\n", "daemon.idle_timeout_s"),
        ("[daemon]\nidle_timeout_s = nan\n", "daemon.idle_timeout_s"),
        ("[daemon]\nframe_timeout_s = inf\n", "daemon.frame_timeout_s"),
        ("[daemon]\nreclaim_grace_s = -1\n", "daemon.reclaim_grace_s"),
        ("[daemon]\nreclaim_grace_s = false\n", "daemon.reclaim_grace_s"),
        ("daemon = 5\n", "daemon"),
        ("[admin]\nuids = 0\n", "admin.uids"),
        ("[admin]\nuids = [-1]\n", "admin.uids[0]"),
        ('[admin]\nuids = [0, "root"]\n', "admin.uids[1]"),
        ("[admin]\ngids = [true]\n", "admin.gids[0]"),
        ("[admin]\ngids = [4294967295]\n", "admin.gids[0]"),
        ('[size_classes]\nlow = "256 MB junk"\n', "size_classes.low"),
        ("[size_classes]\nlow = 0\n", "size_classes.low"),
        ("[size_classes]\nlow = 1.5\n", "size_classes.low"),
        ('[size_classes]\n"512m" = "1G"\n', "size_classes"),
        ('[size_classes]\nnone = "1G"\n', "size_classes"),
        ('[size_classes]\n"../x" = "1G"\n', "size_classes"),
        ("size_classes = 3\n", "size_classes"),
        ("[priorities.batch]\ncpu_weight = 10\n", "priorities.batch.memory_low_fraction"),
        (
            "[priorities.normal]\ncpu_weight = 0\nmemory_low_fraction = 0\nkill_order = 0\n",
            "priorities.normal.cpu_weight",
        ),
        (
            "[priorities.normal]\ncpu_weight = 10001\nmemory_low_fraction = 0\nkill_order = 0\n",
            "priorities.normal.cpu_weight",
        ),
        (
            "[priorities.normal]\ncpu_weight = 1\nmemory_low_fraction = 1.5\nkill_order = 0\n",
            "priorities.normal.memory_low_fraction",
        ),
        (
            "[priorities.normal]\ncpu_weight = 1\nmemory_low_fraction = 0\nkill_order = true\n",
            "priorities.normal.kill_order",
        ),
        ("[priorities]\nnormal = 5\n", "priorities.normal"),
        ('[session]\ndefault_memory = "lots"\n', "session.default_memory"),
        ("[session]\nmax_memory = -5\n", "session.max_memory"),
        ("[session]\nmax_calls = 0\n", "session.max_calls"),
        ("[session]\ndefault_pids = true\n", "session.default_pids"),
        ('[session]\ndefault_memory = "8G"\nmax_memory = "4G"\n', "session.default_memory"),
        ("[call]\nmemory_headroom = 0.9\n", "call.memory_headroom"),
        ('[call]\nmemory_headroom = "1.25"\n', "call.memory_headroom"),
        ('[call]\ndefault_memory_class = "huge"\n', "call.default_memory_class"),
        ("[call]\ndefault_memory_class = 3\n", "call.default_memory_class"),
        ('[call]\ndefault_priority = "urgent"\n', "call.default_priority"),
        ("[call]\ndefault_timeout_s = 0\n", "call.default_timeout_s"),
        ("[call]\ndefault_timeout_s = 100\nmax_timeout_s = 10\n", "call.default_timeout_s"),
        ("[call]\nmax_timeout_s = true\n", "call.max_timeout_s"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    msg = error(tmp_path, text)
    assert msg.startswith("config: ")
    assert key in msg


def test_none_resets_optional_keys(tmp_path):
    c = load(tmp_path, '[call]\ndefault_memory_class = "none"\n[daemon]\nsocket_group = "none"\n')
    assert c.call.default_memory_class is None and c.daemon.socket_group is None


def test_bad_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in error(tmp_path, "[daemon\n")
    assert "not valid TOML" in error(tmp_path, "[daemon]\nmax_frame = 1\nmax_frame = 2\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[daemon]\nsocket_group = "\xe9"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_overrides_win_and_are_validated(tmp_path):
    text = '[daemon]\nmax_frame = 8192\nsocket_group = "agents"\n'
    c = load(tmp_path, text, {"daemon.max_frame": 4096, "daemon.socket": "/tmp/a.sock"})
    assert c.daemon.max_frame == 4096
    assert c.daemon.socket == Path("/tmp/a.sock")
    assert c.daemon.socket_group == "agents"
    # None means "flag not given": the file's value stays.
    c = load(tmp_path, text, {"daemon.socket_group": None, "daemon.max_frame": None})
    assert (c.daemon.socket_group, c.daemon.max_frame) == ("agents", 8192)
    assert load(tmp_path, text, {"daemon.socket_group": "none"}).daemon.socket_group is None
    assert load(tmp_path, "", {"size_classes.low": "128M"}).size_classes["low"] == 128 * MiB


def test_override_errors(tmp_path):
    assert "unknown key daemon.sokcet" in error(tmp_path, "", {"daemon.sokcet": "/x"})
    assert "daemon.max_frame" in error(tmp_path, "", {"daemon.max_frame": "big"})
    assert "not a dotted key" in error(tmp_path, "", {"daemon.": 1})
    assert "not a dotted key" in error(tmp_path, "", {"": 1})
    assert "daemon.max_frame must be an integer" in error(tmp_path, "", {"daemon.max_frame.x": 1})
    msg = error(tmp_path, "[daemon]\nmax_frame = 8192\n", {"daemon.max_frame.x": 1})
    assert "daemon.max_frame is not a table" in msg


def test_override_can_partially_redefine_priority_only_in_full(tmp_path):
    msg = error(tmp_path, "", {"priorities.low.cpu_weight": 5})
    assert "priorities.low.memory_low_fraction is required" in msg
    c = load(
        tmp_path,
        "",
        {"priorities.low": {"cpu_weight": 5, "memory_low_fraction": 0.25, "kill_order": 1}},
    )
    assert c.priorities["low"] == Priority(5, 0.25, 1)


def test_missing_default_path_means_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr("agentcg.core.config.DEFAULT_PATH", tmp_path / "nope.toml")
    assert load_config() == Config.default()
    (tmp_path / "nope.toml").write_text("[daemon]\nmax_frame = 8192\n")
    assert load_config().daemon.max_frame == 8192

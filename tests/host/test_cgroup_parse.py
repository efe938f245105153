"""Pure parsing and formatting in agentcg.cgroup (no cgroupfs: a tmp dir stands in for files)."""

from pathlib import Path

import pytest

from agentcg.kernel.cgroup import (
    Cgroup,
    CgroupError,
    find_cgroup2_mount,
    parse_keyed,
    parse_max,
    parse_mountinfo,
    parse_pressure,
    parse_proc_cgroup,
    v1_controllers,
    validate_child_name,
)

# Abridged from a hybrid host: v1 controllers plus a cgroup2 mount with only hugetlb.
HYBRID = """\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

# A pure v2 host whose container also bind-mounts a subtree elsewhere (listed first).
UNIFIED = """\
25 1 0:22 / / rw - ext4 /dev/sda1 rw
90 25 0:26 /agentcg /mnt/some\\040dir rw,nosuid shared:9 - cgroup2 cgroup2 rw
26 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_parse_mountinfo_fields_and_escapes():
    mounts = parse_mountinfo(UNIFIED)
    bind = mounts[1]
    assert bind.mount_point == Path("/mnt/some dir")
    assert bind.root == "/agentcg"
    assert bind.fstype == "cgroup2"
    assert "nsdelegate" in mounts[2].super_options


def test_find_cgroup2_prefers_hierarchy_root():
    assert find_cgroup2_mount(UNIFIED) == Path("/sys/fs/cgroup")
    assert find_cgroup2_mount(HYBRID) == Path("/sys/fs/cgroup/unified")
    assert find_cgroup2_mount("22 1 0:21 / / rw - ext4 /dev/vda rw\n") is None


def test_v1_controllers_skips_named_and_option_entries():
    bound = v1_controllers(HYBRID)
    assert set(bound) == {"cpu", "memory", "blkio", "pids"}
    assert bound["memory"] == Path("/sys/fs/cgroup/memory")
    assert v1_controllers(UNIFIED) == {}


def test_parse_proc_cgroup():
    assert parse_proc_cgroup("4:memory:/x\n0::/agentcg/s1/c1\n") == "/agentcg/s1/c1"
    assert parse_proc_cgroup("0::/gone (deleted)\n") == "/gone"
    assert parse_proc_cgroup("4:memory:/x\n") is None


def test_parse_keyed_events_and_stat():
    assert parse_keyed("populated 1\nfrozen 0\n") == {"populated": 1, "frozen": 0}
    stat = parse_keyed("usage_usec 81488717\nuser_usec 50975763\nnr_throttled 0\n")
    assert stat["usage_usec"] == 81488717 and stat["nr_throttled"] == 0


def test_parse_pressure():
    text = (
        "some avg10=2.84 avg60=3.60 avg300=1.38 total=6245170\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    p = parse_pressure(text)
    assert p["some"] == {"avg10": 2.84, "avg60": 3.6, "avg300": 1.38, "total": 6245170.0}
    assert p["full"]["total"] == 0
    # cpu.pressure on older kernels has no "full" line
    assert set(parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n")) == {"some"}


def test_parse_max():
    assert parse_max("max\n") is None
    assert parse_max("67108864\n") == 64 << 20


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".hidden", "a/b", "a\nb", "cgroup.procs", "memory.max", "cpu.x", "x" * 256],
)
def test_bad_child_names(name):
    with pytest.raises(CgroupError) as e:
        validate_child_name(name)
    assert e.value.code == "invalid_value"


@pytest.mark.parametrize("name", ["s1", "call-c0123456789ab", "memoryhog", "a.b", "pytest_1"])
def test_good_child_names(name):
    validate_child_name(name)
    assert Cgroup("/x").child(name).path == Path("/x") / name


def test_limit_formatting(tmp_path):
    cg = Cgroup(tmp_path)
    for f in ("memory.max", "memory.high", "cpu.max", "cpu.weight", "pids.max"):
        (tmp_path / f).write_text("")
    cg.set_memory_max(None)
    cg.set_memory_high(512 << 20)
    cg.set_cpu_max((50_000, 100_000))
    cg.set_cpu_weight(400)
    cg.set_pids_max(4096)
    assert (tmp_path / "memory.max").read_text() == "max"
    assert cg.read_int("memory.high") == 512 << 20
    assert (tmp_path / "cpu.max").read_text() == "50000 100000"
    assert cg.read_int("cpu.weight") == 400
    assert cg.read_int("pids.max") == 4096


@pytest.mark.parametrize(
    "call",
    [
        lambda cg: cg.set_memory_max(-1),
        lambda cg: cg.set_memory_max(True),
        lambda cg: cg.set_cpu_weight(0),
        lambda cg: cg.set_cpu_weight(10001),
        lambda cg: cg.set_cpu_max((10, 100_000)),
        lambda cg: cg.set_cpu_max((50_000, 10)),
    ],
)
def test_bad_limits_rejected_before_writing(tmp_path, call):
    with pytest.raises(CgroupError) as e:
        call(Cgroup(tmp_path))
    assert e.value.code == "invalid_value"


def test_errors_are_one_line_with_advice(tmp_path):
    cg = Cgroup(tmp_path / "x")
    cg.create()
    with pytest.raises(CgroupError) as e:
        cg.create()
    assert e.value.code == "conflict" and "exist_ok=True" in e.value.message
    cg.create(exist_ok=True)
    with pytest.raises(CgroupError) as e:
        Cgroup(tmp_path / "nope").read("cgroup.events")
    assert e.value.code == "not_found" and "\n" not in e.value.message
    assert cg.inode == cg.cgroup_id == (tmp_path / "x").stat().st_ino


def test_children_and_memory_peak_absent(tmp_path):
    cg = Cgroup(tmp_path)
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "memory.current").write_text("4096\n")
    assert [c.name for c in cg.children()] == ["a", "b"]
    assert cg.memory_current() == 4096
    assert cg.memory_peak() is None
    assert Cgroup(tmp_path / "missing").children() == []
    with pytest.raises(CgroupError) as e:
        Cgroup(tmp_path / "missing").memory_peak()  # gone, not a kernel without the file
    assert e.value.code == "not_found"


def test_paths_are_built_as_strings_and_agree_with_pathlib(tmp_path):
    cg = Cgroup(tmp_path).child("s1").child("call-c1")
    assert cg.dir == f"{tmp_path}/s1/call-c1" and cg.path == tmp_path / "s1" / "call-c1"
    assert cg.file("memory.events") == str(cg.path / "memory.events")
    assert cg == Cgroup(tmp_path / "s1" / "call-c1") and cg.name == "call-c1"
    assert not cg.exists()
    Cgroup(tmp_path / "s1").create()
    cg.create()
    (cg.path / "cgroup.procs").write_text("")
    assert cg.exists()
    (cg.path / "cgroup.procs").unlink()  # cgroupfs would drop its files with the rmdir
    cg.remove()
    assert not cg.path.exists()

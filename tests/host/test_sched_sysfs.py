"""What agentcg.bpf.sched reads from /sys/kernel/sched_ext, on a fake sysfs tree."""

from pathlib import Path

from agentcg.bpf import sched


def _sysfs(tmp_path: Path, state: str | None, ops: str | None, switch_all: str = "0") -> Path:
    tmp_path.mkdir(exist_ok=True)
    if state is not None:
        (tmp_path / "state").write_text(state + "\n")
        (tmp_path / "switch_all").write_text(switch_all + "\n")
    if ops is not None:
        (tmp_path / "root").mkdir()
        (tmp_path / "root" / "ops").write_text(ops + "\n")
    return tmp_path


def test_kernel_state_names_the_loaded_scheduler(tmp_path: Path) -> None:
    ks = sched.kernel_state(_sysfs(tmp_path, "enabled", sched.NAME, "1"))
    assert (ks.state, ks.ops, ks.switch_all, ks.ours) == ("enabled", sched.NAME, True, True)


def test_kernel_without_sched_ext_is_unsupported(tmp_path: Path) -> None:
    assert sched.kernel_state(_sysfs(tmp_path, None, None)).state == "unsupported"


def test_foreign_scheduler_is_someone_elses_only(tmp_path: Path) -> None:
    assert sched.foreign_scheduler(_sysfs(tmp_path / "a", "enabled", "rusty")) == "rusty"
    assert sched.foreign_scheduler(_sysfs(tmp_path / "b", "enabled", sched.NAME)) is None
    assert sched.foreign_scheduler(_sysfs(tmp_path / "c", "disabled", None)) is None
    assert sched.foreign_scheduler(_sysfs(tmp_path / "d", None, None)) is None

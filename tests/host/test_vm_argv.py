"""How the test VM is started (no VM is booted here)."""

from pathlib import Path

from agentcg.devtools.vm import Kernel, vng_argv

KERNEL = Kernel("7.3.4", Path("/k"))


def _argv(kvm: bool, tcg_thread: str = "single") -> list[str]:
    return vng_argv("vng", KERNEL, Path("/r/guest.sh"), Path("/r"), kvm, 2, "2G", tcg_thread)


def test_emulation_runs_both_vcpus_on_one_host_thread_by_default() -> None:
    argv = _argv(kvm=False)
    assert "--disable-kvm" in argv
    assert "--qemu-opts=-accel tcg,thread=single" in argv
    assert argv[argv.index("--cpus") + 1] == "2"


def test_multi_threaded_emulation_on_request() -> None:
    assert "--qemu-opts=-accel tcg,thread=multi" in _argv(kvm=False, tcg_thread="multi")


def test_kvm_takes_no_emulation_options() -> None:
    argv = _argv(kvm=True)
    assert "--disable-kvm" not in argv
    assert not any(a.startswith("--qemu-opts") for a in argv)
    assert argv[:3] == ["vng", "--run", "/k/usr/lib/modules/7.3.4/vmlinuz"]

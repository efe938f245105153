"""Boot the pinned test kernel with virtme-ng and run one command inside it.

The guest shares this machine's root filesystem over 9p, so the checkout and its
venv are visible as they are. Its console output is not reliable here, so the
guest command writes its log and exit status into a shared read-write directory
which we stream while it runs and read back afterwards; the guest's kernel log goes
there too, so a guest that dies without a status leaves its last kernel messages.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class VMError(Exception):
    """The VM could not be booted or did not report back."""


@dataclass(frozen=True)
class Kernel:
    version: str
    root: Path

    @property
    def image(self) -> Path:
        return self.root / "usr/lib/modules" / self.version / "vmlinuz"


def pinned_kernel(cache: Path | None = None) -> Kernel:
    env = (ROOT / "scripts/kernel.env").read_text()
    kver = next(line.split("=", 1)[1] for line in env.splitlines() if line.startswith("KVER="))
    cache = cache or Path(os.environ.get("AGENTCG_CACHE", ROOT / ".cache"))
    kernel = Kernel(kver, cache / "kernel" / kver)
    if not kernel.image.is_file():
        raise VMError(f"test kernel missing at {kernel.image}: run scripts/setup.sh first")
    return kernel


def _vng() -> str:
    vng = Path(sys.executable).parent / "vng"
    if not vng.exists():
        found = shutil.which("vng")
        if not found:
            raise VMError("virtme-ng (vng) not found: run scripts/setup.sh first")
        vng = Path(found)
    return str(vng)


# Runs as root inside the guest. bpffs and tracefs are not mounted by
# virtme-ng; bcc and bpftool need them.
GUEST_SCRIPT = """\
#!/bin/sh
out={out}
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
export PYTHONDONTWRITEBYTECODE=1 AGENTCG_IN_VM=1 PATH={path}
cd {cwd}
echo ready > "$out/booted"
dmesg -w > "$out/dmesg" 2>&1 &
( {cmd} ) >"$out/log" 2>&1 </dev/null
echo $? > "$out/status.tmp" && mv "$out/status.tmp" "$out/status"
sync
poweroff -f 2>/dev/null
"""


def vng_argv(
    vng: str,
    kernel: Kernel,
    script: Path,
    rwdir: Path,
    kvm: bool,
    cpus: int,
    memory: str,
    tcg_thread: str,
) -> list[str]:
    argv = [
        vng,
        "--run",
        str(kernel.image),
        "--cpus",
        str(cpus),
        "--memory",
        memory,
        "--rwdir",
        str(rwdir),
        "--exec",
        f"sh {shlex.quote(str(script))}",
    ]
    if not kvm:
        # One host thread for all vCPUs by default: with one per vCPU (qemu 7.2) the
        # guest dies now and then of "Oops: int3" while kernel text is patched (at
        # boot, or when sched_ext or a tracepoint is switched): the other vCPU runs
        # the int3 of a patch already finished.
        argv += ["--disable-kvm", f"--qemu-opts=-accel tcg,thread={tcg_thread}"]
    # The console, kept for a guest that dies without a status: a panic is printed
    # there, and only errors and worse (a serial console is slow under emulation).
    return [*argv, "--verbose", "--append", "loglevel=4"]


def _boot(
    kernel: Kernel,
    guest_cmd: str,
    rwdir: Path,
    kvm: bool,
    cpus: int,
    memory: str,
    timeout: float,
    stream: bool,
    boot_timeout: float | None = None,
    tcg_thread: str = "single",
) -> int:
    """Boot once; return the guest command's exit status."""
    script = rwdir / "guest.sh"
    script.write_text(
        GUEST_SCRIPT.format(
            out=shlex.quote(str(rwdir)),
            path=shlex.quote(os.environ.get("PATH", "/usr/bin:/bin")),
            cwd=shlex.quote(os.getcwd()),
            cmd=guest_cmd,
        )
    )
    script.chmod(0o755)
    argv = vng_argv(_vng(), kernel, script, rwdir, kvm, cpus, memory, tcg_thread)
    env = dict(os.environ)
    env["PATH"] = f"{Path(argv[0]).parent}:{env.get('PATH', '')}"
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    console: list[bytes] = []
    reader = threading.Thread(target=lambda: console.extend(proc.stdout or []), daemon=True)
    reader.start()
    log, status = rwdir / "log", rwdir / "status"
    start, pos = time.monotonic(), 0
    try:
        while True:
            if stream and log.exists():
                pos = _copy_new(log, pos)
            if proc.poll() is not None:
                break
            elapsed = time.monotonic() - start
            if boot_timeout and elapsed > boot_timeout and not (rwdir / "booted").exists():
                raise VMError(f"guest did not boot within {boot_timeout:.0f}s")
            if elapsed > timeout:
                raise VMError(f"guest command did not finish within {timeout:.0f}s")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        reader.join(timeout=2)
    if stream and log.exists():
        _copy_new(log, pos)
    if not status.exists():
        # Kept beside the rwdir (which goes away): the whole console and kernel log of a
        # dead guest; a panic's first oops is often far from the end.
        keep = rwdir.parent / f"vm-crash-{time.strftime('%Y%m%dT%H%M%S')}"
        keep.mkdir(exist_ok=True)
        text = b"".join(console).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        (keep / "console").write_bytes(text)
        dmesg = rwdir / "dmesg"
        kmsg = dmesg.read_bytes() if dmesg.exists() else b""
        (keep / "dmesg").write_bytes(kmsg)
        raise VMError(
            f"guest exited without a status (vng exit {proc.returncode}); its kernel log "
            f"ended:\n{kmsg[-3000:].decode(errors='replace')}\n"
            f"console:\n{text[-8000:].decode(errors='replace')}\n"
            f"(whole console and kernel log: {keep})"
        )
    return int(status.read_text().strip() or "255")


def _copy_new(path: Path, pos: int) -> int:
    with path.open("rb") as f:
        f.seek(pos)
        data = f.read()
    if data:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return pos + len(data)


def _kvm_verdict(kernel: Kernel, cache: Path) -> bool:
    """Whether this host can boot the test kernel under KVM; probed once, cached.

    On nested-virtualisation hosts qemu either aborts at once or hangs after an
    emulation failure, so the probe has a short boot watchdog.
    """
    if os.environ.get("AGENTCG_VM_KVM") in ("0", "1"):
        return os.environ["AGENTCG_VM_KVM"] == "1"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    key = hashlib.sha256(f"{os.uname().release} {kernel.version}".encode()).hexdigest()[:16]
    verdict_file = cache / f"kvm-verdict-{key}"
    if verdict_file.exists():
        return verdict_file.read_text().strip() == "kvm"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            ok = (
                _boot(
                    kernel,
                    "true",
                    Path(tmp),
                    kvm=True,
                    cpus=1,
                    memory="512M",
                    timeout=60,
                    stream=False,
                    boot_timeout=25,
                )
                == 0
            )
        except VMError:
            ok = False
    verdict_file.write_text("kvm" if ok else "tcg")
    return ok


def run(
    cmd: list[str],
    *,
    cpus: int = 2,
    memory: str = "2G",
    timeout: float = 3600,
    tcg_thread: str = "single",
) -> int:
    """Run `cmd` as root inside the test VM; stream its output; return its exit status."""
    kernel = pinned_kernel()
    cache = kernel.root.parent.parent
    kvm = _kvm_verdict(kernel, cache)
    if not kvm:
        print(
            "vm-run: KVM cannot boot the test kernel here; using TCG software emulation "
            "(10-50x slower)",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="vm-run.", dir=cache) as tmp:
        return _boot(
            kernel,
            shlex.join(cmd),
            Path(tmp),
            kvm=kvm,
            cpus=cpus,
            memory=memory,
            timeout=timeout,
            stream=True,
            boot_timeout=300,
            tcg_thread=tcg_thread,
        )

"""`agentcg` command line: daemon, run, doctor, status, top, exporter, vm, bench.

The `agentcg` executable is agentcg.cli.entry, which parses `run` itself (fast start-up)
and loads this click CLI for everything else; heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from agentcg import __version__
from agentcg.cli.observe import exporter, status, top
from agentcg.core.errors import AgentcgError


@click.group()
@click.version_option(__version__)
def main() -> None:
    """Per-tool-call cgroup v2 resource control for sandboxed AI agents."""


for _command in (status, top, exporter):
    main.add_command(_command)


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="config file [default: /etc/agentcg/agentcg.toml if present]",
)
@click.option("--root", type=click.Path(path_type=Path), help="cgroup subtree to own")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="socket path")
@click.option("--socket-group", help="group that may connect to the socket")
@click.option(
    "--state-dir", type=click.Path(path_type=Path), help="where the state records live (state.v2/)"
)
@click.option(
    "--delegated",
    is_flag=True,
    help="own the cgroup we were started in (systemd Delegate=yes with "
    "DelegateSubgroup=supervisor) instead of daemon.root",
)
@click.option("-v", "--verbose", is_flag=True, help="log every request")
def daemon(
    config_path: Path | None,
    root: Path | None,
    socket_path: Path | None,
    socket_group: str | None,
    state_dir: Path | None,
    delegated: bool,
    verbose: bool,
) -> None:
    """Run the daemon (as root) in the foreground."""
    import asyncio
    import logging
    import signal

    from agentcg.core.config import DEFAULT_PATH, load_config
    from agentcg.daemon.app import Daemon
    from agentcg.daemon.notify import Notifier
    from agentcg.daemon.server import Server
    from agentcg.daemon.stats import status_line

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if delegated:
        root = _delegated_root()
    overrides: dict[str, Any] = {
        k: str(v)
        for k, v in {
            "daemon.root": root,
            "daemon.socket": socket_path,
            "daemon.socket_group": socket_group,
            "daemon.state_dir": state_dir,
        }.items()
        if v is not None
    }
    if config_path is None and DEFAULT_PATH.exists():
        config_path = DEFAULT_PATH
    try:
        cfg = load_config(config_path, overrides)
    except AgentcgError as e:
        raise click.ClickException(e.message) from None

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        d = Daemon(cfg)
        d.start(loop)
        server = Server(d)
        await server.start()
        d.serving()
        notifier = Notifier.from_env(lambda: status_line(d.reg))
        if notifier:
            notifier.ready(loop)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"agentcg {__version__}: serving {cfg.daemon.socket}, cgroup root {cfg.daemon.root}",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        if notifier:
            notifier.stopping()
        await server.close()
        await d.shutdown()

    try:
        asyncio.run(serve())
    except AgentcgError as e:
        raise click.ClickException(e.message) from None


def _delegated_root() -> Path:
    """The cgroup a service manager delegated to us: ours, or our parent if we sit in
    its supervisor/ subgroup already."""
    from agentcg.kernel.cgroup import cgroup_path_of_pid, find_cgroup2_mount

    mount = find_cgroup2_mount()
    if mount is None:
        raise click.ClickException("--delegated: no cgroup v2 mount; run `agentcg doctor`")
    own = mount / cgroup_path_of_pid(os.getpid()).lstrip("/")
    return own.parent if own.name == "supervisor" else own


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(args: tuple[str, ...]) -> None:
    """Run COMMAND as one tool call in its own cgroup; exit with its status.

    `agentcg run --help` lists the options (parsed by agentcg.cli.entry)."""
    from agentcg.cli.entry import run_main

    sys.exit(run_main(list(args)))


@main.command()
@click.option("--json", "json_output", is_flag=True, help="machine-readable report")
@click.option("--root", type=click.Path(path_type=Path), help="cgroup subtree the daemon would own")
def doctor(json_output: bool, root: Path | None) -> None:
    """Report what this host can do; exit 0 full, 1 degraded, 2 cannot run."""
    from agentcg.cli.doctor.report import doctor_main

    sys.exit(doctor_main(json_output, root))


@main.command()
@click.option("--session", default="demo", help="session name to use")
def demo(session: str) -> None:
    """A scripted agent showing tool calls that fit, burst, get killed, and retry."""
    from agentcg.devtools.demo import run_demo

    try:
        sys.exit(run_demo(session))
    except AgentcgError as e:
        raise click.ClickException(e.message) from None


@main.group()
def vm() -> None:
    """The test kernel VM (for hosts without cgroup v2 controllers or sched_ext)."""


@vm.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--cpus", type=int, default=2, help="guest vCPUs")
@click.option("--memory", default="2G", help="guest memory")
@click.option("--timeout", type=float, default=3600, help="seconds for the whole run")
@click.option(
    "--tcg-thread",
    type=click.Choice(["single", "multi"]),
    default="single",
    show_default=True,
    help="software emulation: one host thread for all vCPUs, or one each (faster, "
    "but the guest can die while kernel text is patched)",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def vm_run(
    command: tuple[str, ...], cpus: int, memory: str, timeout: float, tcg_thread: str
) -> None:
    """Run COMMAND as root inside the pinned test kernel; exit with its status
    (125 when the VM itself failed)."""
    from agentcg.devtools import vm as vmmod

    try:
        sys.exit(
            vmmod.run(
                list(command), cpus=cpus, memory=memory, timeout=timeout, tcg_thread=tcg_thread
            )
        )
    except vmmod.VMError as e:
        click.echo(f"vm-run: error: {e}", err=True)
        sys.exit(125)


@main.group()
def bench() -> None:
    """Benchmarks (ratios measured side by side in one run)."""


@bench.command("toolcall")
@click.option("-n", "--calls", type=int, default=200, help="calls per variant")
@click.option(
    "--no-sched", is_flag=True, help="start the bench's daemon with [sched] enabled = false"
)
@click.option("--json", "json_out", is_flag=True)
def bench_toolcall(calls: int, no_sched: bool, json_out: bool) -> None:
    """Tool-call round trip through the daemon vs the raw cgroup operations."""
    from agentcg.devtools.bench import toolcall

    report = toolcall(calls, sched=not no_sched)
    click.echo(json.dumps(report, indent=2) if json_out else report["text"])


@bench.command("startup")
@click.option("-n", "--runs", type=int, default=50, help="runs per variant")
@click.option(
    "--executable",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the agentcg executable to measure [default: this one]",
)
@click.option("--json", "json_out", is_flag=True)
def bench_startup(runs: int, executable: Path | None, json_out: bool) -> None:
    """Start-up of `agentcg run` (up to its connect) vs the bare interpreter."""
    from agentcg.devtools.bench_startup import startup

    try:
        report = startup(runs, executable)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(report, indent=2) if json_out else report["text"])


@bench.command("cpu")
@click.option("--rounds", type=int, default=3, help="latency rounds per scheduler")
@click.option("--samples", type=int, default=100, help="wake-ups per round")
@click.option("--window", type=float, default=10.0, help="seconds of the weights measurement")
@click.option("--json", "json_out", is_flag=True)
def bench_cpu(rounds: int, samples: int, window: float, json_out: bool) -> None:
    """agentcg's sched_ext scheduler vs the default one, same cpu.weight values: wake-up
    latency of a high-priority call among low- and high-priority hogs, hog throughput,
    weights."""
    from agentcg.core.config import load_config
    from agentcg.devtools.bench_cpu import cpu

    try:
        report = cpu(load_config(), rounds, samples, window)
    except AgentcgError as e:
        raise click.ClickException(e.message) from None
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(report, indent=2) if json_out else report["text"])


@bench.command(
    "isolation", context_settings={"ignore_unknown_options": True, "help_option_names": []}
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_isolation(args: tuple[str, ...]) -> None:
    """1 HIGH + N LOW tenants replaying memory traces: no isolation, static caps,
    agentcg (see `agentcg bench isolation --help`)."""
    from agentcg.devtools.isolation_cli import main as isolation_main

    sys.exit(isolation_main(list(args)))


if __name__ == "__main__":
    from agentcg.cli.entry import main as entry

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    entry()

"""The `agentcg` executable.

Agents put `agentcg run` in front of every command, so that path starts fast: it is
parsed here by a small option table and handed to agentcg.cli.run, and nothing on it
imports click, asyncio or the daemon. Every other command loads the click CLI
(agentcg.cli.main), whose `run` forwards here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

# Annotations only (never evaluated): importing typing would slow `agentcg run`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_WAIT_S = 300.0  # the daemon caps it at its session.max_wait_s

USAGE = "Usage: agentcg run [OPTIONS] [--] COMMAND [ARGS]..."
RUN_HELP = f"""{USAGE}

  Run COMMAND as one tool call in its own cgroup; exit with its status.

Options:
  -m, --memory TEXT      memory the call expects: "512M", "2G" or low|medium|high
  -p, --priority TEXT    critical|high|normal|low
  -l, --label TEXT       tool kind for metrics and advice, e.g. pytest
  --cpu FLOAT            CPU limit in cores
  --pids INTEGER         max processes
  --timeout FLOAT        seconds before the call is killed
  --latency-sensitive    interactive call
  -s, --session TEXT     session name [default: $AGENTCG_SESSION or your own]
  --wait SECONDS         when the session already runs its max_calls, wait up to this
                         long for a slot, in arrival order (0: fail at once)
                         [default: {DEFAULT_WAIT_S:g}; the daemon caps it at its
                         session.max_wait_s]
  --json                 print the outcome as JSON on stderr
  -h, --help             show this message and exit
"""

# option -> (destination, converter)
_VALUED: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--memory": ("memory", str),
    "-m": ("memory", str),
    "--priority": ("priority", str),
    "-p": ("priority", str),
    "--label": ("label", str),
    "-l": ("label", str),
    "--cpu": ("cpu", float),
    "--pids": ("pids", int),
    "--timeout": ("timeout", float),
    "--session": ("session", str),
    "-s": ("session", str),
    "--wait": ("wait_s", float),
}
_FLAGS = {
    "--latency-sensitive": "latency_sensitive",
    "--json": "json",
    "-h": "help",
    "--help": "help",
}
_KINDS: dict[Callable[[str], Any], str] = {str: "text", float: "number", int: "integer"}
_NOT_INTENT = ("session", "json", "help", "wait_s")


class UsageError(Exception):
    pass


def parse_run(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(options, command): options end at `--` or at the first word that is not one."""
    opts: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        i += 1
        if arg in _FLAGS:
            opts[_FLAGS[arg]] = True
            continue
        if arg.startswith("--"):
            name, attached, value = arg.partition("=")
        else:  # a short option may carry its value: -m2G
            name, attached, value = arg[:2], ("=" if len(arg) > 2 else ""), arg[2:]
        if name not in _VALUED:
            raise UsageError(f"no such option: {name}")
        if not attached:
            if i >= len(argv):
                raise UsageError(f"option {name} requires a value")
            value = argv[i]
            i += 1
        dest, convert = _VALUED[name]
        try:
            opts[dest] = convert(value)
        except ValueError:
            raise UsageError(f"option {name}: {value!r} is not a valid {_KINDS[convert]}") from None
    command = argv[i:]
    if not command and not opts.get("help"):
        raise UsageError("missing COMMAND")
    return opts, command


def run_main(argv: list[str]) -> int:
    """`agentcg run ARGV...`; the exit status."""
    try:
        opts, command = parse_run(argv)
    except UsageError as e:
        print(f"{USAGE}\nTry 'agentcg run --help' for help.\n\nError: {e}", file=sys.stderr)
        return 2
    if opts.get("help"):
        print(RUN_HELP, end="")
        return 0
    from agentcg.cli.run import run_tool
    from agentcg.core.errors import AgentcgError

    intent = {k: v for k, v in opts.items() if k not in _NOT_INTENT}
    try:
        return run_tool(
            command,
            opts.get("session"),
            bool(opts.get("json")),
            intent,
            wait_s=opts.get("wait_s", DEFAULT_WAIT_S),
        )
    except AgentcgError as e:
        print(f"Error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # ^C while it waited for a slot: nothing ran
        return 130


def main() -> None:
    if sys.argv[1:2] == ["run"]:
        sys.exit(run_main(sys.argv[2:]))
    from agentcg.cli.main import main as cli

    cli()

"""What a Docker container's agentcg labels ask for; pure.

    docker run --label agentcg.session=task-42 --label agentcg.memory=4G \\
               --label agentcg.priority=high ...

makes the daemon open session ``task-42`` (budget 4 GiB, CPU weight of the "high"
priority) under the container's own cgroup when the container starts, owned by the
container's main process, and close it when the container stops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentcg.core.errors import AgentcgError
from agentcg.core.intent import MAX_CPU, MAX_PIDS, check_int, check_number, parse_size
from agentcg.core.intent import validate_name as _name

PREFIX = "agentcg."
SESSION_LABEL = PREFIX + "session"
KNOWN = frozenset({"session", "memory", "cpu", "pids", "priority"})


@dataclass(frozen=True)
class ContainerSession:
    name: str
    priority: str | None
    args: Mapping[str, Any]  # session.open arguments: name, memory, cpu, pids


def container_session(labels: Mapping[str, str], priorities: Mapping[str, Any]) -> ContainerSession:
    """The session a labelled container asks for; invalid_value naming the bad label."""
    ours = {k[len(PREFIX) :]: v for k, v in labels.items() if k.startswith(PREFIX)}
    unknown = sorted(set(ours) - KNOWN)
    if unknown:
        raise AgentcgError(
            "invalid_value",
            f"unknown label {PREFIX}{unknown[0]}; known: "
            + ", ".join(PREFIX + k for k in sorted(KNOWN)),
        )
    args: dict[str, Any] = {"name": _name(SESSION_LABEL, ours.get("session"))}
    if "memory" in ours:
        args["memory"] = parse_size(ours["memory"], PREFIX + "memory")
    if "cpu" in ours:
        args["cpu"] = check_number(PREFIX + "cpu", _number(ours["cpu"], float), 0.0, MAX_CPU)
    if "pids" in ours:
        args["pids"] = check_int(PREFIX + "pids", _number(ours["pids"], int), 1, MAX_PIDS)
    priority = ours.get("priority")
    if priority is not None and priority not in priorities:
        raise AgentcgError(
            "invalid_value",
            f"label {PREFIX}priority={priority!r} is not a configured priority; use one of "
            + ", ".join(sorted(priorities)),
        )
    return ContainerSession(args["name"], priority, args)


def _number(text: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(text)
    except ValueError:
        return text  # the checker names the label and what it wanted

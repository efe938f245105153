"""Events about tool calls, fanned out: to the call's client connection and to anyone
else who listens (the log, metrics). Publishers never know who listens."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agentcg.core.protocol import event as protocol_event

log = logging.getLogger("agentcg.daemon")

Listener = Callable[[str, str, dict[str, Any]], None]  # (event name, call id, data)


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(
        self,
        name: str,
        call_id: str,
        data: dict[str, Any],
        push: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        """Send the event to the call's connection (if it has one) and every listener."""
        if push is not None:
            push(protocol_event(name, call_id, data))
        for listener in self._listeners:
            try:
                listener(name, call_id, data)
            except Exception:  # a broken listener must not break the daemon's loop
                log.exception("event listener failed on %s for call %s", name, call_id)

"""`agentcg exporter`: serve /metrics from the daemon's `stats` op, collected per scrape.

The exporter holds no state and no privileges: every scrape opens the agentcg socket,
reads one `stats` snapshot and turns it into families (families.py) in a private
registry. It needs a uid the daemon's config lists in metrics.reader_uids (or a gid in
reader_gids) to see every session; otherwise it sees only its own.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from agentcg.client.stats import fetch_stats
from agentcg.core.errors import AgentcgError
from agentcg.exporter import DEFAULT_LISTEN
from agentcg.exporter.families import PREFIX, families

log = logging.getLogger("agentcg.exporter")

Fetch = Callable[[], Mapping[str, Any]]


class StatsCollector:
    """A custom collector: one `stats` read per scrape, nothing kept in between."""

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch

    def collect(self) -> Iterator[Metric]:
        start = time.monotonic()
        try:
            snap: Mapping[str, Any] | None = self.fetch()
        except AgentcgError as e:
            log.warning("scrape: %s", e.message)
            snap = None
        if snap is not None:
            yield from families(snap)
        up = GaugeMetricFamily(PREFIX + "up", "1 if the last read of the daemon's stats worked")
        up.add_metric([], 0 if snap is None else 1)
        took = GaugeMetricFamily(
            PREFIX + "exporter_scrape_duration_seconds", "How long reading the daemon's stats took"
        )
        took.add_metric([], time.monotonic() - start)
        yield from (up, took)


def registry_for(fetch: Fetch) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(fetch))
    return registry


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT → (host, port); raises ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen wants HOST:PORT (e.g. {DEFAULT_LISTEN}); got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, like [::1]:{port}; got {value!r}")
    return host, int(port)


def serve(listen: str, socket_path: str | None, timeout: float) -> None:
    """Bind, then serve until SIGTERM/SIGINT. Never on all interfaces unless told."""
    host, port = parse_listen(listen)
    registry = registry_for(lambda: fetch_stats(socket_path, timeout=timeout))
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info("serving metrics on http://%s/metrics", listen)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(5)

"""`agentcg status`, `agentcg top` and `agentcg exporter`: views of the `stats` op."""

from __future__ import annotations

import json

import click

from agentcg.core.errors import AgentcgError
from agentcg.exporter import DEFAULT_LISTEN


@click.command()
@click.option("--session", "-s", help="one session [default: all you may see]")
@click.option("--json", "json_out", is_flag=True, help="the daemon's stats snapshot as JSON")
def status(session: str | None, json_out: bool) -> None:
    """Show sessions, their running tool calls and the last actions taken.

    Admins and metrics readers see every session; others see their own."""
    from agentcg.cli.render import status_text
    from agentcg.client.stats import fetch_stats

    try:
        snap = fetch_stats(session=session)
    except AgentcgError as e:
        raise click.ClickException(e.message) from None
    click.echo(json.dumps(snap, indent=2) if json_out else status_text(snap))


@click.command()
@click.option("--interval", "-d", type=click.FloatRange(0.2, 60), default=1.0, show_default=True)
@click.option("--session", "-s", help="only this session")
@click.option("--socket", "socket_path", help="daemon socket [default: $AGENTCG_SOCKET]")
def top(interval: float, session: str | None, socket_path: str | None) -> None:
    """Live view of sessions, tool calls, memory, CPU, pressure and actions (q quits)."""
    from agentcg.cli.top import run_top

    run_top(interval, session, socket_path)


@click.command()
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="HOST:PORT to serve /metrics on ([::1]:PORT for IPv6); loopback unless you say so",
)
@click.option("--socket", "socket_path", help="daemon socket [default: $AGENTCG_SOCKET]")
@click.option("--timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True)
def exporter(listen: str, socket_path: str | None, timeout: float) -> None:
    """Serve Prometheus metrics read from the daemon's stats op (no root needed)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        from agentcg.exporter.serve import serve
    except ImportError:
        raise click.ClickException(
            "the exporter needs prometheus-client: pip install 'agentcg[metrics]'"
        ) from None
    try:
        serve(listen, socket_path, timeout)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(
            f"cannot listen on {listen}: {e.strerror or e}; pick another --listen"
        ) from None

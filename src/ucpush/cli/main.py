"""``ucpush``: the root command. Each component contributes a sub-command group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ucpush import __version__
from ucpush.admin.cli import admin_app, onboarding_app, service_app
from ucpush.alarms.cli import app as alarms_app
from ucpush.callpush.cli import app as callpush_app
from ucpush.chat.cli import app as chat_app
from ucpush.cli.common import settings_from
from ucpush.cluster.cli import app as cluster_app
from ucpush.relay.cli import app as relay_app
from ucpush.signin.cli import app as signin_app
from ucpush.sim.cli import app as sim_app
from ucpush.sip.cli import app as sip_app
from ucpush.store.cli import app as db_app

app = typer.Typer(
    name="ucpush",
    help=(
        "Self-hosted push notifications for voice, video and chat.\n\n"
        "Start everything on one machine with [bold]ucpush up[/]; run one component with "
        "its own command. Settings come from ucpush.toml (or --config / $UCPUSH_CONFIG) and "
        "UCPUSH_<SECTION>__<KEY> environment variables; see docs/configuration.md."
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(relay_app, name="relay")
app.add_typer(sim_app, name="sim", help="Local APNs and FCM simulators for offline use and tests.")
app.add_typer(sip_app, name="sip", help="SIP users and registered bindings.")
app.add_typer(signin_app, name="signin", help="End users, devices and client configuration.")
app.add_typer(db_app, name="db", help="Database schema.")
app.add_typer(alarms_app, name="alarms")
app.add_typer(chat_app, name="chat")
app.add_typer(callpush_app, name="callpush")
app.add_typer(cluster_app, name="cluster")
app.add_typer(onboarding_app, name="onboarding")
app.add_typer(admin_app, name="admin")
app.add_typer(service_app, name="service")
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def root(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML config file (default ./ucpush.toml if present)"),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print version")
    ] = False,
) -> None:
    """ucpush command line."""


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the merged configuration (file + environment + defaults) as JSON."""
    print(json.dumps(settings_from(ctx).model_dump(mode="json"), indent=2))


@app.command()
def up(ctx: typer.Context) -> None:
    """Run the whole stack on this machine with embedded defaults (SQLite, simulators)."""
    from ucpush.cli.up import run_up

    run_up(settings_from(ctx))


@app.command()
def serve(ctx: typer.Context) -> None:
    """Run the call node: SIP registrar/proxy with call push, sign-in API, local push, admin
    page, /metrics, and chat push when enabled."""
    from ucpush.node import run_serve

    run_serve(settings_from(ctx))


def main() -> None:
    app()

"""``ucpush sim``: run the APNs (production + sandbox) and FCM simulators until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ucpush import aio
from ucpush.cli.common import settings_from
from ucpush.config import Settings, SimSettings, load_settings
from ucpush.sim.apns import ApnsSimulator, DeviceRegistry
from ucpush.sim.credentials import make_server_tls
from ucpush.sim.fcm import FcmSimulator

app = typer.Typer(
    help="Local APNs and FCM simulators speaking the real provider protocols over HTTP/2.",
    no_args_is_help=True,
)

CA_FILE_NAME = "sim-ca.pem"


@app.callback()
def sim() -> None:
    """Local APNs and FCM simulators (a callback keeps ``serve`` a subcommand)."""


@dataclass
class RunningSimulators:
    apns: ApnsSimulator
    apns_sandbox: ApnsSimulator
    fcm: FcmSimulator
    # With TLS: the PEM of the CA that signed the simulators' certificate, for clients to trust.
    ca_pem: bytes | None = None

    @property
    def urls(self) -> dict[str, str]:
        return {
            "apns": self.apns.url,
            "apns_sandbox": self.apns_sandbox.url,
            "fcm": self.fcm.url,
            "fcm_token_uri": self.fcm.token_uri,
        }

    async def stop(self) -> None:
        await asyncio.gather(self.apns.stop(), self.apns_sandbox.stop(), self.fcm.stop())


async def run_simulators(settings: Settings | SimSettings) -> RunningSimulators:
    """Start the three simulators on the configured ports; APNs ones share their devices.

    For ``ucpush up`` and tests running everything in one process; ``await sims.stop()``.
    """
    if isinstance(settings, Settings):
        settings = settings.sim
    ssl_context, ca_pem = None, None
    if settings.tls:
        ssl_context, ca_pem = make_server_tls([settings.host, "localhost"])
    registry = DeviceRegistry()
    sims = RunningSimulators(
        apns=ApnsSimulator("production", registry, ssl_context, settings.host, settings.apns_port),
        apns_sandbox=ApnsSimulator(
            "sandbox", registry, ssl_context, settings.host, settings.apns_sandbox_port
        ),
        fcm=FcmSimulator(ssl_context, settings.host, settings.fcm_port),
        ca_pem=ca_pem,
    )
    try:
        await sims.apns.start()
        await sims.apns_sandbox.start()
        await sims.fcm.start()
    except BaseException:
        await sims.stop()
        raise
    return sims


async def _serve(settings: Settings, console: Console) -> None:
    sims = await run_simulators(settings.sim)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        for name, url in sims.urls.items():
            console.print(f"[bold]{name:<14}[/bold] {url}")
        if sims.ca_pem is not None:
            ca_file = settings.data_dir / CA_FILE_NAME
            ca_file.parent.mkdir(parents=True, exist_ok=True)
            ca_file.write_bytes(sims.ca_pem)
            console.print(f"[bold]{'ca_file':<14}[/bold] {ca_file}")
        console.print("Control API under /_sim/ on each simulator. Ctrl-C to stop.")
        await stop.wait()
    finally:
        await sims.stop()


@app.command()
def serve(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML configuration file (default: ucpush's)."),
    ] = None,
) -> None:
    """Run APNs production, APNs sandbox and FCM simulators on the configured sim ports."""
    settings = load_settings(config) if config is not None else settings_from(ctx)
    console = Console()
    with contextlib.suppress(KeyboardInterrupt):
        aio.run(_serve(settings, console))
    console.print("simulators stopped")

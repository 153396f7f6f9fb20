"""``ucpush up``: the whole stack in one process on embedded defaults.

SQLite in ``data_dir``, the APNs/FCM simulators standing in for Apple and Google, the relay
configured with a ``local`` tenant whose apps point at the simulators, and the call node (SIP,
client sign-in API, local push, admin page) onboarded to that relay with a voucher it issues
itself, so pushes work end to end at once. Credentials for the simulators are generated on first
start and kept in ``data_dir/sim-credentials``; the first admin's in
``data_dir/admin-initial-password``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ucpush import aio
from ucpush.admin.auth import INITIAL_PASSWORD_FILE
from ucpush.cloud import CloudError, CloudStatus, OnboardingStatus
from ucpush.config import Settings
from ucpush.crypto.secretfile import write_secret
from ucpush.logging import configure_logging
from ucpush.node import RunningNode, run_node
from ucpush.relay.onboarding import ensure_tenant
from ucpush.relay.server import RunningRelay, run_relay
from ucpush.sim.cli import CA_FILE_NAME, RunningSimulators, run_simulators
from ucpush.sim.credentials import make_apns_key, make_service_account
from ucpush.store import open_store
from ucpush.store.repository import NotFound, ProviderApp

LOCAL_TENANT = "local"
TEAM_ID, KEY_ID = "UCPUSHTEAM", "UCPUSHKEY1"
BUNDLE = "org.ucpush.softphone"
FCM_PROJECT = "ucpush-local"
# Vouchers ``ucpush up`` issues to its own node are redeemed at once.
_LOCAL_VOUCHER_TTL = timedelta(minutes=10)


def _sim_credentials(settings: Settings, sims: RunningSimulators) -> tuple[Path, Path]:
    """Load or create the APNs key and FCM service account, and teach the simulators them."""
    folder = settings.data_dir / "sim-credentials"
    p8 = folder / "AuthKey.p8"
    public = folder / "AuthKey.pub.pem"
    if not p8.exists():
        private_pem, public_pem = make_apns_key()
        write_secret(p8, private_pem)
        write_secret(public, public_pem)
    for sim in (sims.apns, sims.apns_sandbox):
        sim.add_signing_key(TEAM_ID, KEY_ID, public.read_bytes())
    # The service account is remade each start: its token_uri names this run's simulator.
    account, account_public = make_service_account(FCM_PROJECT, sims.fcm.token_uri)
    sa_file = folder / "fcm-service-account.json"
    write_secret(sa_file, json.dumps(account, indent=2).encode())
    sims.fcm.add_service_account(
        account["client_email"], FCM_PROJECT, account_public, account["private_key_id"]
    )
    return p8, sa_file


async def _onboard_locally(node: RunningNode, relay: RunningRelay) -> CloudStatus:
    """Onboard the node to the relay beside it, unless it already is (and the relay still
    takes its refresh token). The admin page's Generate Voucher issues local vouchers too."""

    async def issue() -> str:
        return (
            await relay.service.onboarding.create_voucher(LOCAL_TENANT, _LOCAL_VOUCHER_TTL)
        ).code

    if node.admin is not None:
        node.admin.context.voucher_issuer = issue
    cloud = node.cloud
    if cloud.account_id:
        if cloud.relay_url == relay.url:
            status = await cloud.verify()
            if status.status is OnboardingStatus.COMPLETED:
                return status
        # The relay moved (another port) or refuses the token: the relay here shares our
        # database, so the old account is given back in-process, then onboarding starts over.
        with contextlib.suppress(NotFound):
            await relay.service.onboarding.offboard(cloud.account_id)
        await cloud.offboard(force=True)
    return await cloud.enroll(await issue(), relay.url)


async def _up(settings: Settings, console: Console) -> None:
    # Handlers first, so a signal during start-up still stops everything cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sims = await run_simulators(settings.sim)
    try:
        p8, sa_file = _sim_credentials(settings, sims)
        relay_settings = settings.relay.model_copy(
            update={
                "apns_production_url": sims.apns.url,
                "apns_sandbox_url": sims.apns_sandbox.url,
                "fcm_url": sims.fcm.url,
            }
        )
        if sims.ca_pem is not None:
            ca_file = settings.data_dir / CA_FILE_NAME
            ca_file.write_bytes(sims.ca_pem)
            relay_settings = relay_settings.model_copy(update={"provider_ca_file": str(ca_file)})
        wired = settings.model_copy(update={"relay": relay_settings})
        async with await open_store(settings.store_url) as store:
            tenant = await ensure_tenant(store.relay, LOCAL_TENANT)
            for service, env in (("APNS", "production"), ("APNS:dev", "sandbox")):
                await store.relay.put_app(
                    ProviderApp(tenant.id, service, BUNDLE, str(p8), env, TEAM_ID, KEY_ID)
                )
            await store.relay.put_app(ProviderApp(tenant.id, "FCM", FCM_PROJECT, str(sa_file)))
            async with run_relay(wired, store) as relay, run_node(wired, store) as node:
                try:
                    onboarding = (await _onboard_locally(node, relay)).label
                except CloudError as exc:
                    onboarding = f"not onboarded ({exc.detail}): use the admin page"
                table = Table("component", "address", title="ucpush is up", show_lines=False)
                table.add_row("relay", relay.url)
                table.add_row("relay API docs", f"{relay.url}/docs")
                for transport, (host, port) in node.sip.transport.local.items():
                    table.add_row(f"SIP {transport}", f"{host}:{port}")
                table.add_row("sign-in API", node.api_url)
                table.add_row("local push", node.lpns.url)
                if node.admin is not None and node.admin.url:
                    table.add_row("admin page", f"{node.admin.url}/onboarding")
                    table.add_row("admin API docs", f"{node.admin.url}/docs")
                    credentials = settings.data_dir / INITIAL_PASSWORD_FILE
                    if credentials.exists():
                        table.add_row("admin credentials", str(credentials))
                for name, url in sims.urls.items():
                    table.add_row(f"sim {name}", url)
                table.add_row("database", settings.store_url)
                table.add_row("onboarding", f"{onboarding} (cluster {node.cloud.cluster_id})")
                console.print(table)
                console.print(
                    f"Tenant [bold]{LOCAL_TENANT}[/] has APNS, APNS:dev and FCM apps on the "
                    "simulators; this node pushes through it.\nOnboard another cluster: "
                    f"[bold]ucpush relay voucher create --tenant {LOCAL_TENANT}[/]. Ctrl-C stops."
                )
                await stop.wait()
    finally:
        await sims.stop()


def run_up(settings: Settings) -> None:
    configure_logging(settings.log)
    console = Console()
    with contextlib.suppress(KeyboardInterrupt):
        aio.run(_up(settings, console))
    console.print("stopped")

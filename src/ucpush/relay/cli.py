"""``ucpush relay``: run the relay and administer tenants, vouchers, apps and accounts."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ucpush import aio
from ucpush.cli.common import fail, settings_from
from ucpush.config import Settings
from ucpush.logging import configure_logging
from ucpush.relay.identity import Identity
from ucpush.relay.onboarding import Onboarding
from ucpush.relay.service import SERVICES
from ucpush.store import Store, open_store
from ucpush.store.repository import NotFound, ProviderApp

app = typer.Typer(
    help="The push relay: serve /v1/push and administer tenants, vouchers, apps and accounts.",
    no_args_is_help=False,
)
voucher_app = typer.Typer(help="Onboarding vouchers (single use, expiring).", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants and their onboarding status.", no_args_is_help=True)
app_app = typer.Typer(help="A tenant's mobile apps per subscriber service.", no_args_is_help=True)
account_app = typer.Typer(help="Machine accounts of onboarded clusters.", no_args_is_help=True)
keys_app = typer.Typer(help="The relay's token-signing keys.", no_args_is_help=True)
app.add_typer(voucher_app, name="voucher")
app.add_typer(tenant_app, name="tenant")
app.add_typer(app_app, name="app")
app.add_typer(account_app, name="account")
app.add_typer(keys_app, name="keys")

console = Console()


def _with_store(ctx: typer.Context, work: Callable[[Settings, Store], Awaitable[Any]]) -> Any:
    settings = settings_from(ctx)

    async def run() -> Any:
        async with await open_store(settings.store_url) as store:
            return await work(settings, store)

    return asyncio.run(run())


async def _identity(settings: Settings, store: Store) -> Identity:
    from ucpush.relay.server import public_url

    identity = Identity(
        store.relay,
        issuer=public_url(settings, settings.relay.port),
        access_ttl=settings.relay.access_token_ttl,
    )
    await identity.load()
    return identity


@app.callback(invoke_without_command=True)
def relay_main(ctx: typer.Context) -> None:
    """Without a subcommand, serve the relay (same as ``ucpush relay serve``)."""
    if ctx.invoked_subcommand is None:
        serve(ctx)


@app.command()
def serve(ctx: typer.Context) -> None:
    """Serve the relay's HTTP API until interrupted (``relay.workers`` processes)."""
    settings = settings_from(ctx)
    configure_logging(settings.log)
    workers = settings.relay.workers
    if workers > 1:
        settings = _shared_port(settings)
    spawn = multiprocessing.get_context("spawn")
    children = [
        spawn.Process(target=_worker, args=(settings.model_dump_json(),), daemon=True)
        for _ in range(workers - 1)
    ]
    for child in children:
        child.start()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            aio.run(_serve(settings, workers > 1, announce=True))
    finally:
        for child in children:
            child.terminate()  # SIGTERM: each worker stops cleanly
        for child in children:
            child.join(10)


def _shared_port(settings: Settings) -> Settings:
    """Workers must agree on the port (and so on the token issuer URL): fix it first."""
    if settings.relay.port != 0:
        return settings
    with socket.socket() as probe:
        probe.bind((settings.relay.host, 0))
        port = probe.getsockname()[1]
    return settings.model_copy(update={"relay": settings.relay.model_copy(update={"port": port})})


def _worker(settings_json: str) -> None:
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log)
    with contextlib.suppress(KeyboardInterrupt):
        aio.run(_serve(settings, True, announce=False))


async def _serve(settings: Settings, reuse_port: bool, *, announce: bool) -> None:
    from ucpush.relay.server import run_relay

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_relay(settings, reuse_port=reuse_port) as relay:
        aio.settle_heap()
        if announce:
            workers = settings.relay.workers
            console.print(
                f"relay listening on [bold]{relay.url}[/] ({workers} worker"
                f"{'s' if workers > 1 else ''}; Ctrl-C stops)",
                style="green",
            )
        await stop.wait()


@voucher_app.command("create")
def voucher_create(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="tenant name; created if new")],
    ttl_hours: Annotated[
        float | None, typer.Option(help="hours until it expires (default: relay.voucher_ttl)")
    ] = None,
) -> None:
    """Issue a single-use voucher a tenant's cluster redeems to onboard."""

    async def work(settings: Settings, store: Store) -> None:
        ttl = (
            timedelta(hours=ttl_hours)
            if ttl_hours is not None
            else timedelta(seconds=settings.relay.voucher_ttl)
        )
        if ttl <= timedelta(0):
            fail("--ttl-hours must be positive")
        onboarding = Onboarding(store.relay, await _identity(settings, store))
        issued = await onboarding.create_voucher(tenant, ttl)
        console.print(f"voucher for tenant [bold]{issued.tenant.name}[/]:")
        print(issued.code)
        console.print(f"expires {issued.expires_at:%Y-%m-%d %H:%M} UTC; it works once.")

    _with_store(ctx, work)


@tenant_app.command("list")
def tenant_list(ctx: typer.Context) -> None:
    """List tenants with their onboarding status."""

    async def work(_: Settings, store: Store) -> None:
        table = Table("tenant", "status", "active accounts", "apps", "created (UTC)")
        for t in await store.relay.list_tenants():
            accounts = await store.relay.list_machine_accounts(t.id)
            apps = await store.relay.list_apps(t.id)
            table.add_row(
                t.name,
                t.status.value,
                str(sum(a.disabled_at is None for a in accounts)),
                ", ".join(a.service for a in apps) or "-",
                f"{t.created_at:%Y-%m-%d %H:%M}",
            )
        console.print(table)

    _with_store(ctx, work)


@app_app.command("set")
def app_set(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="tenant name")],
    service: Annotated[str, typer.Option(help=f"one of {', '.join(SERVICES)}")],
    topic: Annotated[str, typer.Option(help="APNs bundle id, or FCM project id")],
    credentials_file: Annotated[
        Path, typer.Option(help="APNs .p8 key, or FCM service-account JSON")
    ],
    team_id: Annotated[str, typer.Option(help="APNs team id (10 characters)")] = "",
    key_id: Annotated[str, typer.Option(help="APNs key id (10 characters)")] = "",
    environment: Annotated[
        str | None,
        typer.Option(help="APNs production|sandbox (default: sandbox for :dev and :test)"),
    ] = None,
) -> None:
    """Configure (or replace) a tenant's app for one subscriber service."""
    if service not in SERVICES:
        fail(f"unknown subscriber service {service!r}; use one of {', '.join(SERVICES)}")
    if not credentials_file.is_file():
        fail(f"credentials file not found: {credentials_file}")
    apns = service.startswith("APNS")
    if apns and not (team_id and key_id):
        fail("APNs apps need --team-id and --key-id")
    env = environment or ("sandbox" if service in ("APNS:dev", "APNS:test") else "production")
    if env not in ("production", "sandbox"):
        fail("--environment must be production or sandbox")

    async def work(_: Settings, store: Store) -> None:
        try:
            t = await store.relay.get_tenant_by_name(tenant)
        except NotFound:
            fail(f"unknown tenant {tenant!r} (a voucher creates it)")
        await store.relay.put_app(
            ProviderApp(
                tenant_id=t.id,
                service=service,
                topic=topic,
                credentials_file=str(credentials_file.resolve()),
                environment=env if apns else "production",
                team_id=team_id,
                key_id=key_id,
            )
        )
        console.print(f"{service} app for {tenant}: {topic} ({env if apns else 'FCM'})")

    _with_store(ctx, work)


@app_app.command("list")
def app_list(ctx: typer.Context) -> None:
    """List configured apps."""

    async def work(_: Settings, store: Store) -> None:
        names = {t.id: t.name for t in await store.relay.list_tenants()}
        table = Table("tenant", "service", "topic / project", "environment", "team", "key")
        for a in await store.relay.list_apps():
            table.add_row(
                names.get(a.tenant_id, a.tenant_id),
                a.service,
                a.topic,
                a.environment,
                a.team_id or "-",
                a.key_id or "-",
            )
        console.print(table)

    _with_store(ctx, work)


@account_app.command("list")
def account_list(ctx: typer.Context) -> None:
    """List machine accounts."""

    async def work(_: Settings, store: Store) -> None:
        names = {t.id: t.name for t in await store.relay.list_tenants()}
        table = Table("account", "tenant", "cluster id", "cluster name", "state")
        for a in await store.relay.list_machine_accounts():
            table.add_row(
                a.id,
                names.get(a.tenant_id, a.tenant_id),
                a.cluster_id,
                a.cluster_name,
                "disabled" if a.disabled_at else "active",
            )
        console.print(table)

    _with_store(ctx, work)


@account_app.command("new-refresh-token")
def account_new_refresh_token(ctx: typer.Context, account_id: str) -> None:
    """Revoke an account's refresh tokens and print a new one (manual recovery).

    Put the new token on every node of the cluster (``ucpush`` node configuration).
    """

    async def work(settings: Settings, store: Store) -> None:
        onboarding = Onboarding(store.relay, await _identity(settings, store))
        try:
            token = await onboarding.replace_refresh_token(account_id)
        except NotFound:
            fail(f"unknown machine account {account_id}")
        except ValueError as exc:
            fail(str(exc))
        print(token)

    _with_store(ctx, work)


@account_app.command("disable")
def account_disable(ctx: typer.Context, account_id: str) -> None:
    """Disable a machine account and revoke its tokens (offboarding)."""

    async def work(settings: Settings, store: Store) -> None:
        onboarding = Onboarding(store.relay, await _identity(settings, store))
        try:
            await onboarding.offboard(account_id)
        except NotFound:
            fail(f"unknown machine account {account_id}")
        console.print(f"account {account_id} disabled; its tokens are revoked")

    _with_store(ctx, work)


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List signing keys (the newest active one signs)."""

    async def work(_: Settings, store: Store) -> None:
        table = Table("kid", "created (UTC)", "retired (UTC)")
        for k in await store.relay.list_signing_keys():
            retired = f"{k.retired_at:%Y-%m-%d %H:%M}" if k.retired_at else "-"
            table.add_row(k.kid, f"{k.created_at:%Y-%m-%d %H:%M}", retired)
        console.print(table)

    _with_store(ctx, work)


@keys_app.command("rotate")
def keys_rotate(ctx: typer.Context) -> None:
    """Add a new signing key; tokens signed by older keys stay valid until they expire."""

    async def work(settings: Settings, store: Store) -> None:
        key = await (await _identity(settings, store)).rotate()
        console.print(f"new signing key {key.kid}; running relays pick it up on next verify")

    _with_store(ctx, work)


@keys_app.command("retire")
def keys_retire(ctx: typer.Context, kid: str) -> None:
    """Stop accepting tokens signed by ``kid`` (retire after access_token_ttl has passed)."""

    async def work(_: Settings, store: Store) -> None:
        from datetime import UTC, datetime

        active = [k for k in await store.relay.list_signing_keys() if k.retired_at is None]
        if kid not in {k.kid for k in active}:
            fail(f"no active signing key {kid}")
        if len(active) == 1:
            fail("cannot retire the only active signing key; rotate first")
        await store.relay.retire_signing_key(kid, datetime.now(UTC))
        console.print(f"signing key {kid} retired")

    _with_store(ctx, work)

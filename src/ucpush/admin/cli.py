"""``ucpush onboarding``, ``ucpush admin`` and ``ucpush service``.

These commands work on the database directly (the same code the admin API runs), so they
work while the node is down, and a change reaches every running node of the cluster within
``[cloud] reload_seconds``. They need the node's configuration: the store URL and the same
``cloud.secret_file`` (default ``<data_dir>/cloud-secret``) as the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from ucpush.admin.auth import AdminAuth, AdminAuthError
from ucpush.cli.common import fail, settings_from
from ucpush.cloud import CloudConnection, CloudError, Reachability
from ucpush.config import Settings
from ucpush.store import Store, open_store

T = TypeVar("T")

onboarding_app = typer.Typer(
    help="The cluster's onboarding with its push relay: status, voucher, push switch, "
    "refresh-token recovery, reachability.",
    no_args_is_help=True,
)
admin_app = typer.Typer(help="Administrators of the admin page and API.", no_args_is_help=True)
admin_user_app = typer.Typer(help="Admin users.", no_args_is_help=True)
admin_app.add_typer(admin_user_app, name="user")
service_app = typer.Typer(help="The node's services.", no_args_is_help=True)

console = Console()


@contextlib.contextmanager
def _working(what: str) -> Iterator[None]:
    """A spinner while the relay is asked (it may take up to ``cloud.request_timeout``)."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True
    ) as progress:
        progress.add_task(what, total=None)
        yield


@contextlib.asynccontextmanager
async def _cloud(settings: Settings) -> AsyncIterator[CloudConnection]:
    async with (
        await open_store(settings.store_url) as store,
        await CloudConnection.open(settings, store) as cloud,
    ):
        yield cloud


def _run(ctx: typer.Context, work: Callable[[CloudConnection], Awaitable[T]], what: str = "") -> T:
    settings = settings_from(ctx)

    async def run() -> T:
        async with _cloud(settings) as cloud:
            return await work(cloud)

    try:
        if what:
            with _working(what):
                return asyncio.run(run())
        return asyncio.run(run())
    except CloudError as exc:
        fail(exc.detail)


def _print_status(cloud: CloudConnection, show_pii_token: bool = False) -> None:
    status = cloud.status
    colour = {"completed": "green", "pending": "yellow"}.get(status.status.value, "red")
    table = Table(show_header=False, title="Cloud onboarding")
    table.add_row("status", f"[{colour}]{status.label}[/]")
    if status.detail:
        table.add_row("detail", status.detail)
    table.add_row("cluster ID", cloud.cluster_id)
    table.add_row("relay", cloud.relay_url or "-")
    table.add_row("machine account", cloud.account_id or "-")
    table.add_row("push notifications", "enabled" if cloud.push_enabled else "disabled")
    trust = "system CA store" if cloud.system_ca else "pasted bundle only"
    if cloud.system_ca and cloud.ca_bundle:
        trust += " + pasted bundle"
    table.add_row("relay certificate trust", trust)
    proxy = cloud.proxy
    table.add_row("proxy", f"{proxy.host}:{proxy.port} ({proxy.auth.value})" if proxy else "none")
    table.add_row("troubleshooting upload", "on" if cloud.send_troubleshooting else "off")
    table.add_row("PII encryption", "on" if cloud.encrypt_pii else "off")
    if show_pii_token and cloud.pii_support_token:
        table.add_row("PII support token", cloud.pii_support_token)
    console.print(table)


def _print_reachability(result: Reachability) -> None:
    table = Table(show_header=False, title="Cloud reachability")
    verdict = "[green]reachable[/]" if result.reachable else "[red]not reachable[/]"
    table.add_row("relay", result.url)
    table.add_row("result", f"{verdict}: {result.detail}")
    trusted = {True: "[green]trusted[/]", False: "[red]NOT trusted[/]", None: "-"}
    table.add_row("certificate", trusted[result.certificate_trusted])
    if result.subject or result.issuer:
        table.add_row("subject", result.subject or "-")
        table.add_row("issuer", result.issuer)
    if result.not_after:
        table.add_row("valid until", f"{result.not_after:%Y-%m-%d %H:%M} UTC")
    console.print(table)


@onboarding_app.command("status")
def onboarding_status(
    ctx: typer.Context,
    show_pii_token: Annotated[
        bool, typer.Option("--show-pii-token", help="also print the PII support token")
    ] = False,
) -> None:
    """Show the onboarding status line, cluster ID, relay and options (no relay contact)."""

    async def work(cloud: CloudConnection) -> None:
        _print_status(cloud, show_pii_token)

    _run(ctx, work)


@onboarding_app.command("enroll")
def onboarding_enroll(
    ctx: typer.Context,
    voucher: Annotated[str, typer.Option(help="the voucher from the relay operator")],
    relay_url: Annotated[
        str | None, typer.Option(help="relay base URL (default: the one stored)")
    ] = None,
) -> None:
    """Onboard the cluster with a voucher and enable push notifications."""

    async def work(cloud: CloudConnection) -> None:
        url = relay_url or cloud.relay_url
        if not url:
            raise CloudError(400, "give --relay-url (no relay stored yet)")
        await cloud.enroll(voucher, url)
        _print_status(cloud)

    _run(ctx, work, "redeeming the voucher at the relay…")


@onboarding_app.command("enable")
def onboarding_enable(ctx: typer.Context) -> None:
    """Enable push notifications (the cluster must be onboarded)."""

    async def work(cloud: CloudConnection) -> None:
        await cloud.enable_push()
        console.print("push notifications [green]enabled[/]")

    _run(ctx, work)


@onboarding_app.command("disable")
def onboarding_disable(ctx: typer.Context) -> None:
    """Disable push notifications; the machine account is kept (see offboard)."""

    async def work(cloud: CloudConnection) -> None:
        await cloud.disable_push()
        console.print("push notifications [yellow]disabled[/]")

    _run(ctx, work)


@onboarding_app.command("offboard")
def onboarding_offboard(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option(help="forget the account even if the relay cannot be told")
    ] = False,
) -> None:
    """Give the machine account back to the relay; onboard again with a new voucher."""

    async def work(cloud: CloudConnection) -> None:
        await cloud.offboard(force=force)
        console.print("offboarded: status [yellow]Onboarding Pending[/]")

    _run(ctx, work, "telling the relay…")


@onboarding_app.command("replace-refresh-token")
def onboarding_replace_refresh_token(ctx: typer.Context) -> None:
    """Manual recovery (SPEC §5): read the refresh token the relay operator issued
    (ucpush relay account new-refresh-token) from standard input and store it for every
    node of the cluster."""
    if sys.stdin.isatty():
        console.print("paste the refresh token, then Enter:", style="dim")
    token = sys.stdin.readline().strip()
    if not token:
        fail("no refresh token on standard input")

    async def work(cloud: CloudConnection) -> None:
        status = await cloud.replace_refresh_token(token)
        if status.alarm:
            fail(f"token stored, but {status.label}: {status.detail}")
        console.print(f"refresh token replaced: [green]{status.label}[/]")

    _run(ctx, work, "checking the token with the relay…")


@onboarding_app.command("refresh")
def onboarding_refresh(ctx: typer.Context) -> None:
    """Fetch a fresh access token from the relay now; the status becomes Completed or an
    error naming its alarm (exit status 1)."""

    async def work(cloud: CloudConnection) -> None:
        status = await cloud.verify()
        _print_status(cloud)
        if status.alarm:
            raise typer.Exit(1)

    _run(ctx, work, "asking the relay for an access token…")


@onboarding_app.command("check")
def onboarding_check(
    ctx: typer.Context,
    relay_url: Annotated[
        str | None, typer.Option(help="relay base URL (default: the one stored)")
    ] = None,
) -> None:
    """Cloud reachability and certificate check; exit status 1 if the relay is unreachable."""

    async def work(cloud: CloudConnection) -> Reachability:
        return await cloud.check_reachability(relay_url)

    result = _run(ctx, work, "connecting to the relay…")
    _print_reachability(result)
    if not result.reachable:
        raise typer.Exit(1)


def _admin_run(ctx: typer.Context, work: Callable[[AdminAuth, Store], Awaitable[T]]) -> T:
    settings = settings_from(ctx)

    async def run() -> T:
        async with await open_store(settings.store_url) as store:
            auth = AdminAuth.from_files(
                store.admins,
                Path(settings.admin.secret_file or settings.data_dir / "admin-secret"),
                settings.admin.session_minutes * 60,
            )
            return await work(auth, store)

    try:
        return asyncio.run(run())
    except AdminAuthError as exc:
        fail(exc.detail)


PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from standard input")
]


def _password(from_stdin: bool, prompt: str) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=True))


@admin_user_app.command("add")
def admin_user_add(
    ctx: typer.Context,
    username: str,
    password_stdin: PasswordStdin = False,
) -> None:
    """Create an administrator (prompted for the password unless --password-stdin)."""
    password = _password(password_stdin, "password")

    async def work(auth: AdminAuth, _: Store) -> None:
        await auth.add_user(username, password)

    _admin_run(ctx, work)
    console.print(f"administrator [bold]{username}[/] added")


@admin_user_app.command("password")
def admin_user_password(
    ctx: typer.Context,
    username: str,
    password_stdin: PasswordStdin = False,
) -> None:
    """Set an administrator's password."""
    password = _password(password_stdin, "new password")

    async def work(auth: AdminAuth, _: Store) -> None:
        await auth.set_password(username, password)

    _admin_run(ctx, work)
    console.print(f"password of [bold]{username}[/] changed")


@admin_user_app.command("list")
def admin_user_list(ctx: typer.Context) -> None:
    """List administrators."""

    async def work(_: AdminAuth, store: Store) -> None:
        table = Table("user", "created (UTC)")
        for admin in await store.admins.list():
            table.add_row(admin.username, f"{admin.created_at:%Y-%m-%d %H:%M}")
        console.print(table)

    _admin_run(ctx, work)


_PROBE_SECONDS = 2.0


async def _answers(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _PROBE_SECONDS)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _endpoints(settings: Settings) -> list[tuple[str, str, int]]:
    """(service, host, port) of this node's TCP listeners from its configuration."""
    sip = settings.sip
    rows: list[tuple[str, str, int]] = []
    if "tcp" in sip.transports:
        rows.append(("SIP TCP", sip.host, sip.tcp_port))
    if "tls" in sip.transports and sip.tls_cert:  # without a certificate TLS stays off
        rows.append(("SIP TLS", sip.host, sip.tls_port))
    rows.append(("sign-in API", settings.signin.host, settings.signin.port))
    rows.append(("local push", settings.lpns.host, settings.lpns.port))
    if settings.admin.enabled:
        rows.append(("admin page and API", settings.admin.host, settings.admin.port))
    return rows


@service_app.command("status")
def service_status(ctx: typer.Context) -> None:
    """Probe this node's services on their configured ports, and show the cluster's onboarding
    status and active alarms; exit status 1 if a service does not answer."""
    settings = settings_from(ctx)
    endpoints = _endpoints(settings)

    async def run() -> tuple[list[bool | None], str, list[Any]]:
        results: list[bool | None] = []
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("probing services", total=len(endpoints))
            for _, host, port in endpoints:
                results.append(None if port == 0 else await _answers(host, port))
                progress.advance(task)
        async with (
            await open_store(settings.store_url) as store,
            await CloudConnection.open(settings, store) as cloud,
        ):
            onboarding = f"{cloud.status.label} (cluster {cloud.cluster_id})"
            return results, onboarding, await store.alarms.list_alarms(limit=50)

    results, onboarding, active = asyncio.run(run())
    table = Table("service", "address", "state", title="Services of this node")
    for (name, host, port), up in zip(endpoints, results, strict=True):
        state = {True: "[green]running[/]", False: "[red]not answering[/]", None: "-"}[up]
        table.add_row(name, f"{host}:{port or 'any'}", state)
    console.print(table)
    console.print(f"onboarding: {onboarding}")
    if active:
        alarms = Table("severity", "alarm", "node", "since", title="Active alarms")
        for a in active:
            alarms.add_row(a.severity, a.name, a.node, f"{a.raised_at:%Y-%m-%d %H:%M}")
        console.print(alarms)
    else:
        console.print("no active alarms")
    if False in results:
        raise typer.Exit(1)

"""``ucpush signin``: administer end users, enterprise parameters, UC services and profiles.

These commands change the database directly; a running node's local push service notices
deletions, sign-outs and configuration changes within ``[lpns] recheck_seconds``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from ucpush.cli.common import fail, settings_from
from ucpush.signin.service import SigninError, SigninService
from ucpush.store import open_store

app = typer.Typer(
    help="Client sign-in: end users, enterprise parameters, UC services, service profiles.",
    no_args_is_help=True,
)
user_app = typer.Typer(help="End users who sign in from the mobile app.", no_args_is_help=True)
enterprise_app = typer.Typer(help="Client OAuth enterprise parameters.", no_args_is_help=True)
ucservice_app = typer.Typer(help="UC services of type client configuration.", no_args_is_help=True)
profile_app = typer.Typer(help="Service profiles (lists of UC services).", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(enterprise_app, name="enterprise")
app.add_typer(ucservice_app, name="ucservice")
app.add_typer(profile_app, name="profile")

console = Console()


def _run(ctx: typer.Context, work: Callable[[SigninService], Awaitable[Any]]) -> Any:
    settings = settings_from(ctx)

    async def run() -> Any:
        async with await open_store(settings.store_url) as store:
            return await work(SigninService.from_settings(settings, store.signin))

    try:
        return asyncio.run(run())
    except SigninError as exc:
        fail(exc.detail)


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    username: str,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
    display_name: Annotated[str, typer.Option(help="name shown to others")] = "",
    profile: Annotated[str | None, typer.Option(help="service profile name")] = None,
) -> None:
    """Create an end user (the password is stored as a salted scrypt hash)."""
    _run(
        ctx,
        lambda s: s.add_user(username, password, display_name=display_name, profile=profile),
    )
    console.print(f"user [bold]{username}[/] added")


@user_app.command("list")
def user_list(ctx: typer.Context) -> None:
    async def work(service: SigninService) -> None:
        profiles = {p.id: p.name for p in await service.repo.list_profiles()}
        table = Table("username", "display name", "profile", "created")
        for user in await service.repo.list_users():
            table.add_row(
                user.username,
                user.display_name,
                profiles.get(user.profile_id or "", ""),
                f"{user.created_at:%Y-%m-%d %H:%M}",
            )
        console.print(table)

    _run(ctx, work)


@user_app.command("delete")
def user_delete(ctx: typer.Context, username: str) -> None:
    """Delete an end user with their devices and refresh tokens."""
    _run(ctx, lambda s: s.delete_user(username))
    console.print(f"user [bold]{username}[/] deleted")


@user_app.command("set-profile")
def user_set_profile(
    ctx: typer.Context,
    username: str,
    profile: Annotated[str, typer.Option(help="service profile name; '' removes it")],
) -> None:
    """Attach a service profile to an end user."""
    _run(ctx, lambda s: s.set_user_profile(username, profile or None))
    console.print(f"user [bold]{username}[/]: profile {profile or '(none)'}")


@enterprise_app.command("set")
def enterprise_set(
    ctx: typer.Context,
    oauth_refresh_login: Annotated[
        Literal["on", "off"] | None,
        typer.Option(help="OAuth with refresh login flow; off revokes every refresh token"),
    ] = None,
    access_token_minutes: Annotated[
        int | None, typer.Option(help="access token lifetime, 1-1440 minutes")
    ] = None,
    refresh_token_days: Annotated[
        int | None, typer.Option(help="refresh token lifetime, 1-365 days")
    ] = None,
) -> None:
    """Change client OAuth parameters (the ones not given keep their value)."""
    flag = None if oauth_refresh_login is None else oauth_refresh_login == "on"
    params, revoked = _run(
        ctx,
        lambda s: s.set_enterprise(
            oauth_refresh_login=flag,
            access_token_minutes=access_token_minutes,
            refresh_token_days=refresh_token_days,
        ),
    )
    _show_enterprise(params)
    if revoked:
        console.print(f"{revoked} refresh tokens revoked: those clients must sign in again")


@enterprise_app.command("show")
def enterprise_show(ctx: typer.Context) -> None:
    _show_enterprise(_run(ctx, lambda s: s.repo.get_enterprise()))


def _show_enterprise(params: Any) -> None:
    console.print(
        f"oauth_refresh_login={'on' if params.oauth_refresh_login else 'off'} "
        f"access_token_minutes={params.access_token_minutes} "
        f"refresh_token_days={params.refresh_token_days}",
        highlight=False,
    )


@ucservice_app.command("add")
def ucservice_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="UC service name")],
    param: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE, repeatable, e.g. LocalPushSSIDList=Ward4;Ward5"),
    ] = None,
) -> None:
    """Add a UC service of type client configuration."""
    params = _params(param)
    _run(ctx, lambda s: s.add_ucservice(name, params))
    console.print(f"UC service [bold]{name}[/] added")


@ucservice_app.command("set")
def ucservice_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="UC service name")],
    param: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE, repeatable; replaces all parameters")
    ] = None,
) -> None:
    """Replace a UC service's parameters (running nodes apply it within [lpns] recheck_seconds)."""
    params = _params(param)
    _run(ctx, lambda s: s.set_ucservice_params(name, params))
    console.print(f"UC service [bold]{name}[/] updated")


def _params(items: list[str] | None) -> dict[str, str]:
    params = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            fail(f"--param {key or item!r}: use KEY=VALUE")
        params[key] = value
    return params


@ucservice_app.command("list")
def ucservice_list(ctx: typer.Context) -> None:
    async def work(service: SigninService) -> None:
        table = Table("name", "type", "parameters")
        for uc in await service.repo.list_ucservices():
            table.add_row(uc.name, uc.type, "\n".join(f"{k}={v}" for k, v in uc.params.items()))
        console.print(table)

    _run(ctx, work)


@profile_app.command("add")
def profile_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="service profile name")],
    ucservice: Annotated[
        list[str] | None, typer.Option(help="UC service name, repeatable; later ones win")
    ] = None,
) -> None:
    """Add a service profile referencing UC services."""
    _run(ctx, lambda s: s.add_profile(name, ucservice or []))
    console.print(f"service profile [bold]{name}[/] added")


@profile_app.command("list")
def profile_list(ctx: typer.Context) -> None:
    async def work(service: SigninService) -> None:
        names = {s.id: s.name for s in await service.repo.list_ucservices()}
        table = Table("name", "UC services")
        for profile in await service.repo.list_profiles():
            table.add_row(profile.name, ", ".join(names[i] for i in profile.ucservice_ids))
        console.print(table)

    _run(ctx, work)

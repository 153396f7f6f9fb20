"""``ucpush sip``: SIP accounts of the call node's registrar and their current bindings."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ucpush.cli.common import fail, settings_from
from ucpush.sip.digest import MD5, SHA256, compute_ha1
from ucpush.sip.registrar import canonical_aor
from ucpush.sip.uri import parse_uri
from ucpush.store import Store, open_store
from ucpush.store.repository import Conflict, NotFound, SipUser

app = typer.Typer(
    help="The call node's SIP registrar: accounts (digest credentials) and registered bindings.",
    no_args_is_help=True,
)
user_app = typer.Typer(
    help="SIP accounts; only digest HA1 hashes are stored.", no_args_is_help=True
)
bindings_app = typer.Typer(help="Registered contacts (bindings).", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(bindings_app, name="bindings")

console = Console()


def _with_store(ctx: typer.Context, work: Callable[[Store], Awaitable[Any]]) -> Any:
    settings = settings_from(ctx)

    async def run() -> Any:
        async with await open_store(settings.store_url) as store:
            return await work(store)

    return asyncio.run(run())


def _password(password: str | None, password_stdin: bool) -> str:
    if (password is None) == (not password_stdin):
        fail("give exactly one of --password and --password-stdin")
    if password_stdin:
        # One line, so `echo secret | ucpush sip user add ...` works; the newline is not part.
        password = sys.stdin.readline().rstrip("\r\n")
    assert password is not None
    if not password:
        fail("empty password")
    return password


def _aor(text: str) -> str:
    """``text`` as the registrar's canonical AOR (so lookups match what REGISTER stores)."""
    try:
        return canonical_aor(parse_uri(text))
    except ValueError as exc:  # SipParseError too
        fail(f"bad AOR {text!r}: {exc}")


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="digest user name")],
    realm: Annotated[str, typer.Option(help="digest realm, usually the SIP domain")],
    password: Annotated[
        str | None, typer.Option(help="password (visible in the process list: prefer stdin)")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
    aor: Annotated[
        str | None, typer.Option(help="address-of-record [default: sip:USERNAME@REALM]")
    ] = None,
    display_name: Annotated[str, typer.Option(help="name shown to callees")] = "",
) -> None:
    """Add an account. The password itself is not stored, only its MD5 and SHA-256 HA1."""
    secret = _password(password, password_stdin)
    user = SipUser(
        aor=_aor(aor or f"sip:{username}@{realm}"),
        username=username,
        realm=realm,
        ha1_md5=compute_ha1(username, realm, secret, MD5),
        ha1_sha256=compute_ha1(username, realm, secret, SHA256),
        created_at=datetime.now(UTC),
        display_name=display_name,
    )

    async def work(store: Store) -> None:
        try:
            await store.sip.add_user(user)
        except Conflict:
            fail(f"an account named {username!r} in realm {realm!r} or for {user.aor} exists")
        console.print(f"added [bold]{username}[/] ({user.aor}) in realm {realm}")

    _with_store(ctx, work)


@user_app.command("list")
def user_list(ctx: typer.Context) -> None:
    """List accounts."""

    async def work(store: Store) -> None:
        table = Table("username", "realm", "AOR", "display name", "created (UTC)")
        for u in await store.sip.list_users():
            table.add_row(
                u.username, u.realm, u.aor, u.display_name, f"{u.created_at:%Y-%m-%d %H:%M}"
            )
        console.print(table)

    _with_store(ctx, work)


@user_app.command("delete")
def user_delete(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="digest user name")],
    realm: Annotated[str, typer.Option(help="digest realm")],
) -> None:
    """Delete an account and its bindings."""

    async def work(store: Store) -> None:
        try:
            await store.sip.delete_user(username, realm)
        except NotFound:
            fail(f"no account {username!r} in realm {realm!r}")
        console.print(f"deleted {username} in realm {realm}")

    _with_store(ctx, work)


@bindings_app.command("list")
def bindings_list(
    ctx: typer.Context,
    aor: Annotated[str | None, typer.Option(help="only this address-of-record")] = None,
) -> None:
    """List current bindings with their flow and push parameters."""
    wanted = None if aor is None else _aor(aor)

    async def work(store: Store) -> None:
        now = datetime.now(UTC)
        table = Table("AOR", "contact", "expires in", "instance", "source", "push", "user agent")
        for b in await store.sip.list_bindings(wanted):
            left = int((b.expires_at - now).total_seconds())
            push = f"{b.pn_provider} {b.pn_prid[:8]}…" if b.push_enabled else ""
            source = f"{b.source_transport} {b.source_host}:{b.source_port}"
            expires = f"{left} s" if left > 0 else "expired"
            table.add_row(b.aor, b.contact, expires, b.instance_id, source, push, b.user_agent)
        console.print(table)

    _with_store(ctx, work)

"""``ucpush callpush``: per-AOR call settings (mobility identity, external presentation).

They change the database directly; a running node reads them for every held call."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ucpush.callpush.profiles import CallProfile
from ucpush.cli.common import fail, settings_from
from ucpush.sip.errors import SipParseError
from ucpush.sip.registrar import canonical_aor
from ucpush.sip.uri import parse_uri
from ucpush.store import open_store

app = typer.Typer(help="Call push settings per user (AOR).", no_args_is_help=True)
profile_app = typer.Typer(
    help="Mobility identity and external presentation per AOR.", no_args_is_help=True
)
app.add_typer(profile_app, name="profile")
console = Console()
# A dialable number: digits with an optional leading +, as the PBX routes it.
_NUMBER = re.compile(r"^\+?[0-9*#]{1,32}$")


def _aor(value: str) -> str:
    try:
        return canonical_aor(parse_uri(value))
    except (SipParseError, ValueError):
        fail(f"not a SIP AOR: {value!r} (e.g. sip:alice@example.org)")


@profile_app.command("set")
def profile_set(
    ctx: typer.Context,
    aor: Annotated[str, typer.Argument(help="the user's SIP AOR, e.g. sip:alice@example.org")],
    mobility: Annotated[
        str, typer.Option(help="number calls go to when no woken device takes them; '' = none")
    ] = "",
    presentation_name: Annotated[str, typer.Option(help="name callees see for this caller")] = "",
    presentation_number: Annotated[
        str, typer.Option(help="number callees see for this caller")
    ] = "",
) -> None:
    """Set (or, with nothing given, remove) an AOR's call settings."""
    key = _aor(aor)
    for label, number in (("--mobility", mobility), ("--presentation-number", presentation_number)):
        if number and not _NUMBER.match(number):
            fail(f"{label} must be digits with an optional leading + (got {number!r})")
    if len(presentation_name) > 255:
        fail("--presentation-name is longer than 255 characters")
    settings = settings_from(ctx)
    profile = CallProfile(key, mobility, presentation_name, presentation_number)

    async def run() -> None:
        async with await open_store(settings.store_url) as store:
            await store.call_profiles.put(profile, datetime.now(UTC))

    asyncio.run(run())
    saved = bool(mobility or presentation_name or presentation_number)
    console.print(f"call settings of {key} {'saved' if saved else 'removed'}")


@profile_app.command("list")
def profile_list(ctx: typer.Context) -> None:
    """List AORs with call settings."""
    settings = settings_from(ctx)

    async def run() -> list[CallProfile]:
        async with await open_store(settings.store_url) as store:
            return await store.call_profiles.list()

    table = Table("AOR", "mobility identity", "presentation name", "presentation number")
    for p in asyncio.run(run()):
        table.add_row(
            p.aor,
            p.mobility_number or "-",
            p.presentation_name or "-",
            p.presentation_number or "-",
        )
    console.print(table)

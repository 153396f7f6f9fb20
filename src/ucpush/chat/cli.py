"""``ucpush chat``: what an operator needs to connect the chat server and the phones."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console

from ucpush.chat.registration import component_secret, node_key, registration_for
from ucpush.cli.common import fail, settings_from
from ucpush.store import open_store
from ucpush.store.repository import NotFound, PushState

app = typer.Typer(
    help="Chat push (XEP-0357 app server for Prosody and ejabberd).", no_args_is_help=True
)
console = Console()


@app.command("registration")
def registration(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(help="the sign-in device id")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print the push jid, node and secret a signed-in device enables XEP-0357 push with."""
    settings = settings_from(ctx)
    if not settings.chat.component_jid:
        fail("set chat.component_jid first (config file or UCPUSH_CHAT__COMPONENT_JID)")

    async def device_state() -> PushState:
        async with await open_store(settings.store_url) as store:
            return (await store.signin.get_device(device_id)).push_state

    try:
        state = asyncio.run(device_state())
    except NotFound:
        fail(f"no device {device_id!r}: the app must sign in first")
    if state is not PushState.ACTIVE:
        fail(f"device {device_id!r} is {state.value}: it gets no pushes")
    reg = registration_for(node_key(settings), settings.chat.component_jid, device_id)
    if as_json:
        print(json.dumps({"jid": reg.jid, "node": reg.node, "secret": reg.secret}))
    else:
        console.print(f"jid     {reg.jid}\nnode    {reg.node}\nsecret  {reg.secret}")


@app.command("component-secret")
def show_component_secret(ctx: typer.Context) -> None:
    """Print the component password (made on first use) for the chat server's config:
    Prosody component_secret, ejabberd ejabberd_service password."""
    print(component_secret(settings_from(ctx)))

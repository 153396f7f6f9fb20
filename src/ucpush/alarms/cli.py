"""``ucpush alarms``: list alarms, set the troubleshooting upload's frequency and minimum level,
upload at once, and (on the relay) read what tenants uploaded.

Settings are stored in the database, where running nodes re-read them every
``[alarms] poll_seconds``; ``pushnow`` asks the running nodes and waits for one to answer.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ucpush.alarms.catalogue import CATALOGUE, PUSH_LEVELS, parse_push_level
from ucpush.alarms.pii import unseal
from ucpush.cli.common import fail, run_with_store
from ucpush.config import Settings
from ucpush.crypto.jwe import JweError
from ucpush.store import Store
from ucpush.store.repository import NotFound

app = typer.Typer(
    help="Alarms (SPEC §7) and their upload to the relay for troubleshooting.",
    no_args_is_help=True,
)
console = Console()
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def _run(ctx: typer.Context, work: Callable[[Store, Settings], Awaitable[T]]) -> T:
    return run_with_store(ctx, work)


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else ""


@app.command("list")
def list_alarms(
    ctx: typer.Context,
    history: Annotated[bool, typer.Option("--all", help="include cleared alarms")] = False,
    node: Annotated[str | None, typer.Option(help="only this node's alarms")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """Active alarms of every node (newest first); --all adds the cleared ones kept."""

    async def work(store: Store, _: Settings) -> None:
        records = await store.alarms.list_alarms(active_only=not history, node=node)
        if as_json:
            for r in records:
                print(
                    json.dumps(
                        {
                            "node": r.node,
                            "name": r.name,
                            "severity": r.severity,
                            "key": r.key,
                            "count": r.count,
                            "raised_at": r.raised_at.isoformat(),
                            "last_raised_at": r.last_raised_at.isoformat(),
                            "cleared_at": r.cleared_at.isoformat() if r.cleared_at else None,
                            "details": dict(r.details),
                        }
                    )
                )
            return
        table = Table("node", "alarm", "severity", "instance", "count", "raised", "last", "cleared")
        for r in records:
            table.add_row(
                r.node,
                r.name,
                r.severity,
                r.key,
                str(r.count),
                _when(r.raised_at),
                _when(r.last_raised_at),
                _when(r.cleared_at) or "[red]active[/]",
            )
        console.print(table)
        if not records:
            console.print("no alarms" if history else "no active alarms")

    _run(ctx, work)


@app.command("catalogue")
def catalogue() -> None:
    """Every alarm this version can raise, with its severity and meaning."""
    table = Table("alarm", "severity", "instance key", "meaning")
    for alarm in CATALOGUE.values():
        table.add_row(alarm.name, alarm.severity, ", ".join(alarm.key), alarm.meaning)
    console.print(table)


@app.command("pushfrequency")
def push_frequency(
    ctx: typer.Context,
    minutes: Annotated[int, typer.Argument(help="5..90 minutes between uploads")],
) -> None:
    """Upload alarms to the relay every MINUTES minutes (5..90; default from the config)."""
    if not 5 <= minutes <= 90:
        fail(f"push frequency must be 5..90 minutes, got {minutes}")
    _run(ctx, lambda store, _: store.alarms.set_push_frequency(minutes, _now()))
    console.print(f"alarms are uploaded every [bold]{minutes}[/] minutes")


@app.command("minpushlevel")
def min_push_level(
    ctx: typer.Context,
    level: Annotated[str, typer.Argument(help=" | ".join(PUSH_LEVELS))],
) -> None:
    """Upload only alarms at or above LEVEL (Critical, Error, Warning, Notice, Info)."""
    try:
        parsed = parse_push_level(level)
    except ValueError as exc:
        fail(str(exc))
    _run(ctx, lambda store, _: store.alarms.set_min_push_level(parsed, _now()))
    console.print(f"alarms at or above [bold]{parsed}[/] are uploaded")


@app.command("status")
def status(ctx: typer.Context) -> None:
    """The upload settings in effect and the last upload's result."""

    async def work(store: Store, settings: Settings) -> None:
        prefs = await store.alarms.prefs(_now())
        table = Table("setting", "value", "from", show_header=False)
        table.add_row(
            "push frequency",
            f"{prefs.push_frequency_minutes or settings.alarms.push_frequency_minutes} min",
            "database" if prefs.push_frequency_minutes else "config",
        )
        table.add_row(
            "minimum level",
            prefs.min_push_level or settings.alarms.min_push_level,
            "database" if prefs.min_push_level else "config",
        )
        table.add_row("last pushnow", _when(prefs.push_requested_at), "")
        result = prefs.push_error or ("ok" if prefs.push_result_at else "")
        table.add_row("last upload", f"{_when(prefs.push_result_at)} {result}".strip(), "")
        console.print(table)

    _run(ctx, work)


@app.command("pushnow")
def push_now(
    ctx: typer.Context,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="wait for a running node's result")
    ] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait", min=1)] = 30.0,
) -> None:
    """Upload alarms to the relay now (the running nodes pick the request up)."""

    async def work(store: Store, settings: Settings) -> tuple[bool, str]:
        requested = _now()
        await store.alarms.request_push(requested)
        if not wait:
            return True, ""
        deadline = time.monotonic() + timeout
        with console.status("waiting for a running node to upload..."):
            while time.monotonic() < deadline:
                prefs = await store.alarms.prefs(_now())
                if prefs.push_result_at is not None and prefs.push_result_at >= requested:
                    return True, prefs.push_error
                await asyncio.sleep(min(0.5, settings.alarms.poll_seconds))
        return False, ""

    answered, error = _run(ctx, work)
    if not wait:
        console.print("upload requested")
    elif not answered:
        fail(f"no running node answered within {timeout:g} s (is `ucpush serve` running?)")
    elif error:
        fail(f"alarm upload failed: {error}")
    else:
        console.print("alarms uploaded")


@app.command("received")
def received(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="tenant name")],
    pii_token_stdin: Annotated[
        bool,
        typer.Option(
            "--pii-token-stdin", help="read the cluster's PII support token from stdin, decrypt"
        ),
    ] = False,
    limit: Annotated[int, typer.Option(min=1)] = 200,
) -> None:
    """Relay side: the alarms a tenant's clusters uploaded (newest first)."""
    token = sys.stdin.readline().strip() if pii_token_stdin else ""
    if pii_token_stdin and not token:
        fail("no PII support token on stdin")

    async def work(store: Store, _: Settings) -> list[Any]:
        try:
            found = await store.relay.get_tenant_by_name(tenant)
        except NotFound:
            fail(f"no tenant named {tenant!r}")
        return await store.tenant_alarms.list_for_tenant(found.id, limit)

    rows = _run(ctx, work)
    table = Table("cluster", "node", "alarm", "severity", "count", "raised", "cleared", "details")
    for row in rows:
        details = dict(row.details)
        if row.pii and token:
            try:
                details.update(unseal(row.pii, token))
            except JweError as exc:
                fail(f"cannot decrypt PII of alarm {row.alarm_id}: {exc}")
        elif row.pii:
            details["pii"] = "(encrypted)"
        table.add_row(
            row.cluster_id,
            row.node,
            row.name,
            row.severity,
            str(row.count),
            _when(row.raised_at),
            _when(row.cleared_at),
            json.dumps(details, separators=(",", ":")),
        )
    console.print(table)

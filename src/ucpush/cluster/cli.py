"""``ucpush cluster``: node groups, device pools, and which nodes are alive (docs/cluster.md)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ucpush.cli.common import run_with_store
from ucpush.config import Settings
from ucpush.store import Store
from ucpush.store.repository import Conflict, NotFound

app = typer.Typer(
    help="Node groups, device pools and live membership of a cluster of call nodes.",
    no_args_is_help=True,
)
group_app = typer.Typer(help="Node groups: ordered lists of up to 3 nodes.", no_args_is_help=True)
pool_app = typer.Typer(help="Device pools: users assigned to a node group.", no_args_is_help=True)
app.add_typer(group_app, name="group")
app.add_typer(pool_app, name="pool")
console = Console()
T = TypeVar("T")


def _run(ctx: typer.Context, work: Callable[[Store, Settings], Awaitable[T]]) -> T:
    return run_with_store(ctx, work, refused=(ValueError, Conflict, NotFound))


@group_app.command("add")
def group_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="group name")],
    nodes: Annotated[
        list[str], typer.Argument(help="node names in order: primary [secondary [tertiary]]")
    ],
) -> None:
    """Create a node group; its nodes are tried in the order given."""

    async def work(store: Store, _: Settings) -> None:
        group = await store.cluster.add_group(name, nodes, datetime.now(UTC))
        console.print(f"group {group.name}: {' > '.join(group.nodes)}", highlight=False)

    _run(ctx, work)


@group_app.command("list")
def group_list(ctx: typer.Context) -> None:
    """Every node group with its nodes in order."""

    async def work(store: Store, _: Settings) -> None:
        table = Table("group", "primary", "secondary", "tertiary")
        for group in await store.cluster.list_groups():
            table.add_row(group.name, *(*group.nodes, "", "", "")[:3])
        console.print(table)

    _run(ctx, work)


@pool_app.command("add")
def pool_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="pool name")],
    group: Annotated[str, typer.Option(help="the node group serving the pool's devices")],
) -> None:
    """Create a device pool served by a node group."""

    async def work(store: Store, _: Settings) -> None:
        pool = await store.cluster.add_pool(name, group, datetime.now(UTC))
        console.print(f"pool {pool.name} -> group {pool.group}", highlight=False)

    _run(ctx, work)


@pool_app.command("assign")
def pool_assign(
    ctx: typer.Context,
    pool: Annotated[str, typer.Argument(help="pool name")],
    users: Annotated[list[str], typer.Argument(help="user names (moved out of other pools)")],
) -> None:
    """Put users' devices in a pool."""

    async def work(store: Store, _: Settings) -> None:
        await store.cluster.assign_users(pool, users)
        console.print(f"{len(set(users))} user(s) in pool {pool}", highlight=False)

    _run(ctx, work)


@pool_app.command("list")
def pool_list(ctx: typer.Context) -> None:
    """Every device pool and its node group."""

    async def work(store: Store, _: Settings) -> None:
        table = Table("pool", "group")
        for pool in await store.cluster.list_pools():
            table.add_row(pool.name, pool.group)
        console.print(table)

    _run(ctx, work)


@app.command("status")
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """Live nodes (heartbeats in Redis) and each group's active node."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from ucpush.cluster.service import active_member, live_members

    async def work(store: Store, settings: Settings) -> None:
        client = aioredis.from_url(settings.cluster.redis_url)
        try:
            live = await live_members(client, settings.cluster.key_prefix)
        except RedisError as exc:
            raise OSError(f"redis: {exc}") from exc
        finally:
            await client.aclose()
        groups = await store.cluster.list_groups()
        active = {g.name: active_member(g, live) for g in groups}
        if as_json:
            print(
                json.dumps(
                    {
                        "live": {m.name: {"sip": m.sip, "lpns": m.lpns} for m in live.values()},
                        "groups": {
                            g.name: {
                                "nodes": list(g.nodes),
                                "active": a.name if (a := active[g.name]) else None,
                            }
                            for g in groups
                        },
                    }
                )
            )
            return
        nodes = Table("node", "SIP URI", "local push")
        for member in sorted(live.values(), key=lambda m: m.name):
            nodes.add_row(member.name, member.sip, member.lpns)
        console.print(nodes)
        table = Table("group", "nodes", "active")
        for group in groups:
            current = active[group.name]
            table.add_row(
                group.name,
                " > ".join(group.nodes),
                current.name if current else "[red]none alive[/]",
            )
        console.print(table)

    _run(ctx, work)

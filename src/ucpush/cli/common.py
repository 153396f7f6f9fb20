"""Pieces every CLI command shares: settings from ``--config``, one-line errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from ucpush.config import Settings, load_settings

if TYPE_CHECKING:
    from ucpush.store import Store

T = TypeVar("T")

_err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def run_with_store(
    ctx: typer.Context,
    work: Callable[[Store, Settings], Awaitable[T]],
    *,
    refused: tuple[type[Exception], ...] = (),
) -> T:
    """Run ``work`` on the configured database; an unreachable database, or one of
    ``refused`` (whose message says why), ends the command with one line."""
    from ucpush.store import open_store

    settings = settings_from(ctx)

    async def run() -> T:
        async with await open_store(settings.store_url) as store:
            return await work(store, settings)

    try:
        return asyncio.run(run())
    except OSError as exc:
        fail(f"database unreachable: {exc}")
    except refused as exc:
        fail(str(exc))


def settings_from(ctx: typer.Context) -> Settings:
    root = ctx.find_root()
    if root.obj is None:
        try:
            root.obj = load_settings(root.params.get("config"))
        except FileNotFoundError as exc:
            fail(str(exc))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            fail(f"invalid configuration: {problems}")
    return root.obj

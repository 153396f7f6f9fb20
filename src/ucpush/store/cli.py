"""``ucpush db``: database schema management."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from ucpush.config import load_settings
from ucpush.store import open_store

app = typer.Typer(no_args_is_help=True)


@app.callback()
def db() -> None:
    """Manage the database schema."""


@app.command()
def upgrade(
    url: Annotated[
        str | None,
        typer.Option(help="Database URL [default: store.url from the configuration]"),
    ] = None,
) -> None:
    """Create or upgrade the database schema to the newest version."""
    revision = asyncio.run(_upgrade(url or load_settings().store_url))
    typer.echo(f"database schema at revision {revision}")


async def _upgrade(url: str) -> str | None:
    # Imported here: loading Alembic would slow down every other ``ucpush`` command.
    from ucpush.store.migrate import current_revision

    async with await open_store(url) as store:
        return await current_revision(store.engine)

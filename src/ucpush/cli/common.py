"""Pieces every CLI command shares: settings from ``--config``, one-line errors."""

from __future__ import annotations

from typing import NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from ucpush.config import Settings, load_settings

_err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


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

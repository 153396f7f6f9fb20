"""Pieces every HTTP API of ucpush shares: the error shape, validation messages that never
echo values, and a request-body limit enforced before the body is buffered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Every error of our APIs: ``{"error": <code>, "detail": <one sentence>}``."""
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """Validation errors as one sentence naming fields, never their values."""
    problems = []
    for err in errors:
        where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        problems.append(f"{where}: {err['msg']}")
    return "; ".join(problems)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes before they are buffered (413)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await error_response(413, "body_too_large", f"body over {self.limit} bytes")(
                    scope, receive, send
                )
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await error_response(413, "body_too_large", f"body over {self.limit} bytes")(
                scope, receive, send
            )

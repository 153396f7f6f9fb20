"""A sign-in service on a SQLite store and an httpx client on its ASGI app."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.signin.helpers import Clock
from ucpush.signin.api import create_app
from ucpush.signin.service import SigninService
from ucpush.signin.tokens import TokenSigner
from ucpush.store import Store, open_store


class RecordingSessions:
    """Stands in for the local push service: remembers what it was asked to close."""

    def __init__(self) -> None:
        self.closed: list[tuple[str | None, str | None, str]] = []

    def close_sessions(
        self, *, user: str | None = None, device: str | None = None, reason: str
    ) -> int:
        self.closed.append((user, device, reason))
        return 1


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await open_store(f"sqlite+aiosqlite:///{tmp_path / 'node.db'}") as opened:
        yield opened


@pytest.fixture
def sessions() -> RecordingSessions:
    return RecordingSessions()


@pytest.fixture
def service(store: Store, clock: Clock, sessions: RecordingSessions) -> SigninService:
    return SigninService(
        store.signin,
        TokenSigner(secrets.token_bytes(32), "ucpush-test"),
        push_key_grace=timedelta(hours=1),
        clock=clock,
        sessions=sessions,
    )


@pytest.fixture
async def client(service: SigninService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
        yield c

"""A node's admin app served on a free port, next to a relay over real TLS (tests/relay)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.relay.conftest import Stack, relay_store_url, stack
from ucpush.admin.app import RunningAdmin, run_admin
from ucpush.config import AdminSettings, CloudSettings, Settings
from ucpush.signin.service import SigninService
from ucpush.store import Store, open_store

__all__ = ["Stack", "relay_store_url", "stack"]

ADMIN, PASSWORD = "ops", "correct horse battery"


@dataclass
class Node:
    admin: RunningAdmin
    store: Store
    signin: SigninService
    settings: Settings

    def api(self, auth: httpx.Auth | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.admin.url, auth=auth or httpx.BasicAuth(ADMIN, PASSWORD), timeout=30
        )


@pytest.fixture
async def node(tmp_path: Path, stack: Stack) -> AsyncIterator[Node]:
    settings = Settings(
        data_dir=tmp_path / "node",
        admin=AdminSettings(port=0),
        cloud=CloudSettings(reload_seconds=3600),
    )
    async with await open_store(f"sqlite+aiosqlite:///{tmp_path / 'node.db'}") as store:
        signin = SigninService.from_settings(settings, store.signin)
        async with run_admin(settings, store, signin, voucher_issuer=stack.voucher) as admin:
            await admin.context.auth.add_user(ADMIN, PASSWORD)
            yield Node(admin, store, signin, settings)

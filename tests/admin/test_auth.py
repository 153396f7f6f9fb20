"""Admin users and sessions on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.pg import pg_database
from ucpush.admin.auth import INITIAL_PASSWORD_FILE, AdminAuth, AdminAuthError
from ucpush.store import Store, open_store


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        with pg_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with await open_store(store_url) as opened:
        yield opened


@pytest.fixture
def auth(store: Store) -> AdminAuth:
    return AdminAuth(store.admins, b"k" * 32, session_seconds=600)


async def test_initial_user_once(auth: AdminAuth, tmp_path: Path):
    path = await auth.ensure_initial_user(tmp_path)
    assert path == tmp_path / INITIAL_PASSWORD_FILE
    username, password = path.read_text().split()
    assert await auth.check_password(username, password) == "admin"
    assert await auth.ensure_initial_user(tmp_path) is None  # users exist: nothing new


async def test_passwords(auth: AdminAuth, store: Store):
    await auth.add_user("ops", "a long password")
    assert await auth.check_password("ops", "a long password") == "ops"
    for username, password in (("ops", "wrong password"), ("ghost", "a long password")):
        with pytest.raises(AdminAuthError) as refused:
            await auth.check_password(username, password)
        assert refused.value.status == 401 and "wrong user name or password" in str(refused.value)
    await auth.set_password("ops", "another password")
    assert await auth.check_password("ops", "another password") == "ops"
    stored = (await store.admins.get("ops")).password_hash
    assert stored.startswith("scrypt$") and "another" not in stored


async def test_sessions(auth: AdminAuth, store: Store):
    await auth.add_user("ops", "a long password")
    token, session = auth.issue("ops", now=1000.0)
    assert (await auth.verify(token, now=1599.0)).session_id == session.session_id
    with pytest.raises(AdminAuthError, match="expired"):
        await auth.verify(token, now=1600.0)
    payload, _, signature = token.partition(".")
    for bad in (f"{payload}.{signature[:-1]}A", f"{payload}x.{signature}", "", "no-dot", "a.b.c"):
        with pytest.raises(AdminAuthError, match="invalid session"):
            await auth.verify(bad, now=1000.0)
    other_key = AdminAuth(store.admins, b"j" * 32, 600)
    with pytest.raises(AdminAuthError, match="invalid session"):
        await other_key.verify(token, now=1000.0)
    await store.admins.delete("ops")
    with pytest.raises(AdminAuthError, match="no longer exists"):
        await auth.verify(token, now=1000.0)


async def test_csrf_tokens_are_per_session(auth: AdminAuth):
    _, first = auth.issue("ops")
    _, second = auth.issue("ops")
    auth.check_csrf(first, auth.csrf_token(first))
    with pytest.raises(AdminAuthError) as refused:
        auth.check_csrf(first, auth.csrf_token(second))
    assert refused.value.status == 403

"""``ucpush signin`` admin commands against a SQLite store in tmp_path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ucpush.signin.cli import app
from ucpush.store import open_store

runner = CliRunner()


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UCPUSH_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("UCPUSH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ./ucpush.toml
    return tmp_path


def ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_admin_flow(data_dir: Path) -> None:
    assert "oauth_refresh_login=off access_token_minutes=60 refresh_token_days=60" in ok(
        "enterprise", "show"
    )
    out = ok("enterprise", "set", "--oauth-refresh-login", "on", "--access-token-minutes", "30")
    assert "oauth_refresh_login=on access_token_minutes=30 refresh_token_days=60" in out
    ok("ucservice", "add", "--name", "wards", "--param", "LocalPushSSIDList=Ward4;Ward5")
    assert "LocalPushSSIDList=Ward4;Ward5" in ok("ucservice", "list")
    ok("ucservice", "set", "--name", "wards", "--param", "LocalPushSSIDList=Ward6")
    assert "LocalPushSSIDList=Ward6" in ok("ucservice", "list")
    ok("profile", "add", "--name", "nurses", "--ucservice", "wards")
    assert "wards" in ok("profile", "list")
    ok("user", "add", "alice", "--password", "pw", "--display-name", "Alice A")
    ok("user", "set-profile", "alice", "--profile", "nurses")
    listing = ok("user", "list")
    assert "alice" in listing and "nurses" in listing
    ok("user", "delete", "alice")
    assert "alice" not in ok("user", "list")
    assert (data_dir / "signin-secret").stat().st_size == 32

    async def stored() -> tuple[str, ...]:
        async with await open_store(f"sqlite+aiosqlite:///{data_dir / 'ucpush.db'}") as store:
            return tuple(s.name for s in await store.signin.list_ucservices())

    assert asyncio.run(stored()) == ("wards",)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("enterprise", "set", "--access-token-minutes", "0"), "1-1440 minutes, got 0"),
        (("enterprise", "set", "--refresh-token-days", "400"), "1-365 days, got 400"),
        (("ucservice", "add", "--name", "x", "--param", "LocalPushSSIDList=a b"), "SSID 1"),
        (("ucservice", "add", "--name", "x", "--param", "novalue"), "use KEY=VALUE"),
        (("ucservice", "set", "--name", "nope", "--param", "A=b"), "no UC service 'nope'"),
        (("profile", "add", "--name", "p", "--ucservice", "missing"), "no UC service 'missing'"),
        (("user", "delete", "nobody"), "no user 'nobody'"),
        (("user", "set-profile", "nobody", "--profile", ""), "no user 'nobody'"),
    ],
)
def test_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_duplicate_user() -> None:
    ok("user", "add", "bob", "--password", "pw")
    result = runner.invoke(app, ["user", "add", "bob", "--password", "pw"])
    assert result.exit_code == 1 and "user 'bob' exists" in result.output

"""``ucpush chat`` commands against a SQLite store in tmp_path."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ucpush.chat.cli import app
from ucpush.chat.registration import secret_matches
from ucpush.store import open_store
from ucpush.store.repository import Device, EndUser, Platform, PushState

runner = CliRunner()


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UCPUSH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("UCPUSH_CHAT__COMPONENT_JID", "push.example.test")
    monkeypatch.delenv("UCPUSH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def add_device(data_dir: Path, state: PushState = PushState.ACTIVE) -> None:
    async def work() -> None:
        now = datetime.now(UTC)
        async with await open_store(f"sqlite+aiosqlite:///{data_dir / 'ucpush.db'}") as store:
            await store.signin.add_user(EndUser("u-1", "alice", "scrypt$x", now))
            await store.signin.put_device(
                Device("iphone-1", "u-1", Platform.IOS, "APNS", "ab" * 32, b"", "", now, now)
            )
            await store.signin.set_push_state("iphone-1", state, now)

    asyncio.run(work())


def test_registration_of_a_signed_in_device(data_dir: Path) -> None:
    add_device(data_dir)
    result = runner.invoke(app, ["registration", "iphone-1", "--json"])
    assert result.exit_code == 0, result.output
    reg = json.loads(result.output)
    assert reg["jid"] == "push.example.test" and reg["node"] == "iphone-1"
    key = (data_dir / "chat-secret").read_bytes()
    assert secret_matches(key, "iphone-1", reg["secret"])
    # Same key, same secret: the registration is stable across runs.
    again = runner.invoke(app, ["registration", "iphone-1", "--json"])
    assert json.loads(again.output) == reg


def test_registration_refuses_unknown_and_signed_out_devices(data_dir: Path) -> None:
    result = runner.invoke(app, ["registration", "nope"])
    assert result.exit_code == 1 and "no device 'nope'" in result.output
    add_device(data_dir, PushState.SIGNED_OUT)
    result = runner.invoke(app, ["registration", "iphone-1"])
    assert result.exit_code == 1 and "signed-out" in result.output


def test_component_secret_is_made_once(data_dir: Path) -> None:
    first = runner.invoke(app, ["component-secret"]).output.strip()
    assert len(first) >= 24
    assert runner.invoke(app, ["component-secret"]).output.strip() == first
    assert (data_dir / "chat-component-secret").stat().st_mode & 0o077 == 0


def test_registration_needs_the_component_jid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UCPUSH_CHAT__COMPONENT_JID")
    result = runner.invoke(app, ["registration", "iphone-1"])
    assert result.exit_code == 1 and "chat.component_jid" in result.output

"""`ucpush relay ...` administration commands, against a real SQLite store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ucpush.cli.main import app
from ucpush.sim.credentials import make_apns_key

VOUCHER = re.compile(r"^[A-Z2-7]{4}(?:-[A-Z2-7]{4}){5}$", re.M)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("UCPUSH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(app, list(args))
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def test_voucher_create_makes_pending_tenant(run):
    out = run("relay", "voucher", "create", "--tenant", "acme", "--ttl-hours", "2").output
    assert VOUCHER.search(out)
    assert "works once" in out
    listing = run("relay", "tenant", "list").output
    assert "acme" in listing and "pending" in listing


def test_app_set_validates_and_lists(run, tmp_path: Path):
    key = tmp_path / "AuthKey.p8"
    key.write_bytes(make_apns_key()[0])
    run("relay", "voucher", "create", "--tenant", "acme")
    bad_service = run(
        "relay", "app", "set", "--tenant", "acme", "--service", "APNS:prod", "--topic", "x",
        "--credentials-file", str(key), ok=False,
    )  # fmt: skip
    assert bad_service.exit_code == 1 and "unknown subscriber service" in bad_service.output
    missing_ids = run(
        "relay", "app", "set", "--tenant", "acme", "--service", "APNS", "--topic", "x",
        "--credentials-file", str(key), ok=False,
    )  # fmt: skip
    assert "--team-id" in missing_ids.output
    no_file = run(
        "relay", "app", "set", "--tenant", "acme", "--service", "FCM", "--topic", "p",
        "--credentials-file", str(tmp_path / "nope.json"), ok=False,
    )  # fmt: skip
    assert "not found" in no_file.output
    unknown_tenant = run(
        "relay", "app", "set", "--tenant", "nobody", "--service", "APNS:dev", "--topic", "x",
        "--credentials-file", str(key), "--team-id", "T", "--key-id", "K", ok=False,
    )  # fmt: skip
    assert "unknown tenant" in unknown_tenant.output
    run(
        "relay", "app", "set", "--tenant", "acme", "--service", "APNS:dev", "--topic",
        "org.acme.phone", "--credentials-file", str(key), "--team-id", "TEAM123456",
        "--key-id", "KEY1234567",
    )  # fmt: skip
    listing = run("relay", "app", "list").output
    assert "APNS:dev" in listing and "sandbox" in listing and "org.acme.phone" in listing


def test_unknown_account_and_key_errors_are_one_line(run):
    result = run("relay", "account", "new-refresh-token", "nope", ok=False)
    assert result.exit_code == 1
    assert "unknown machine account nope" in result.output
    run("relay", "keys", "list")
    retire = run("relay", "keys", "retire", "nope", ok=False)
    assert "no active signing key" in retire.output


def test_keys_rotate_and_retire(run):
    assert "kid" in run("relay", "keys", "list").output
    rotated = run("relay", "keys", "rotate").output
    new_kid = re.search(r"new signing key (\w+)", rotated).group(1)
    kids = re.findall(r"│ (\w{16}) ", run("relay", "keys", "list").output)
    assert new_kid in kids and len(kids) == 2
    old = next(k for k in kids if k != new_kid)
    run("relay", "keys", "retire", old)
    only = run("relay", "keys", "retire", new_kid, ok=False)
    assert "only active signing key" in only.output


def test_bad_config_is_one_clear_line(run, tmp_path: Path):
    config = tmp_path / "bad.toml"
    config.write_text("[relay]\naccess_token_ttl = 1\n")
    result = run("--config", str(config), "relay", "tenant", "list", ok=False)
    assert result.exit_code == 1
    assert "invalid configuration: relay.access_token_ttl" in result.output

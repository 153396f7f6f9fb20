"""``ucpush onboarding``, ``ucpush admin`` and ``ucpush service`` on the node's database,
against a real relay over TLS."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.relay.conftest import Stack, relay_store_url, stack
from ucpush.admin.app import run_admin
from ucpush.cli.main import app
from ucpush.cloud import CloudConnection
from ucpush.config import AdminSettings, CloudSettings, Settings
from ucpush.signin.service import SigninService
from ucpush.store import open_store

__all__ = ["relay_store_url", "stack"]


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "node"
        self.store_url = f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"
        self.env = {
            "UCPUSH_DATA_DIR": str(self.data_dir),
            "UCPUSH_STORE__URL": self.store_url,
            "UCPUSH_LOG__LEVEL": "error",
            "COLUMNS": "200",
        }

    async def __call__(self, *args: str, stdin: str | None = None) -> Result:
        # The relay runs in this event loop: the command gets its own thread and loop.
        return await asyncio.to_thread(
            CliRunner().invoke, app, list(args), input=stdin, env=self.env
        )

    def settings(self, **overrides: object) -> Settings:
        return Settings(
            data_dir=self.data_dir,
            store={"url": self.store_url},
            cloud=CloudSettings(reload_seconds=3600),
            **overrides,
        )


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


async def test_onboarding_commands(stack: Stack, cli: Cli):
    status = await cli("onboarding", "status")
    assert status.exit_code == 0 and "Onboarding Pending" in status.output
    check = await cli("onboarding", "check", "--relay-url", stack.relay.url)
    assert check.exit_code == 1 and "NOT trusted" in check.output
    async with (
        await open_store(cli.store_url) as store,
        await CloudConnection.open(cli.settings(), store) as cloud,
    ):
        await cloud.set_certificates(system_ca=True, ca_bundle=stack.ca_file.read_text())
        cluster_id = cloud.cluster_id
    check = await cli("onboarding", "check", "--relay-url", stack.relay.url)
    assert check.exit_code == 0 and "trusted" in check.output and "NOT" not in check.output

    bad = await cli("onboarding", "enroll", "--voucher", "NOPE", "--relay-url", stack.relay.url)
    assert bad.exit_code == 1 and bad.output.strip().startswith("error: ")
    assert len(bad.output.strip().splitlines()) == 1
    no_url = await cli("onboarding", "enroll", "--voucher", await stack.voucher())
    assert no_url.exit_code == 1 and "--relay-url" in no_url.output
    done = await cli(
        "onboarding", "enroll", "--voucher", await stack.voucher(), "--relay-url", stack.relay.url
    )
    assert done.exit_code == 0, done.output
    assert "Onboarding Completed" in done.output and cluster_id in done.output

    assert "disabled" in (await cli("onboarding", "disable")).output
    assert "enabled" in (await cli("onboarding", "enable")).output

    [account] = await stack.store.relay.list_machine_accounts(stack.tenant_id)
    token = await stack.relay.service.onboarding.replace_refresh_token(account.id)
    broken = await cli("onboarding", "refresh")
    assert broken.exit_code == 1 and "AccessTokenInvalid" in broken.output
    refused = await cli("onboarding", "replace-refresh-token", stdin="wrong-token\n")
    assert refused.exit_code == 1 and "refused" in refused.output
    empty = await cli("onboarding", "replace-refresh-token", stdin="\n")
    assert empty.exit_code == 1 and "standard input" in empty.output
    replaced = await cli("onboarding", "replace-refresh-token", stdin=token + "\n")
    assert replaced.exit_code == 0 and "Onboarding Completed" in replaced.output
    assert (await cli("onboarding", "refresh")).exit_code == 0

    offboarded = await cli("onboarding", "offboard")
    assert offboarded.exit_code == 0 and "Pending" in offboarded.output
    assert (await cli("onboarding", "enable")).exit_code == 1


async def test_admin_users(cli: Cli):
    added = await cli("admin", "user", "add", "bob", "--password-stdin", stdin="long password 1\n")
    assert added.exit_code == 0, added.output
    again = await cli("admin", "user", "add", "bob", "--password-stdin", stdin="long password 2\n")
    assert again.exit_code == 1 and "exists" in again.output
    short = await cli("admin", "user", "add", "eve", "--password-stdin", stdin="short\n")
    assert short.exit_code == 1 and "10-256" in short.output
    changed = await cli(
        "admin", "user", "password", "bob", "--password-stdin", stdin="another password\n"
    )
    assert changed.exit_code == 0
    missing = await cli("admin", "user", "password", "zed", "--password-stdin", stdin="x" * 12)
    assert missing.exit_code == 1 and "no admin user" in missing.output
    listing = await cli("admin", "user", "list")
    assert "bob" in listing.output and "eve" not in listing.output


async def test_service_status(cli: Cli):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        admin_port = probe.getsockname()[1]
    settings = cli.settings(admin=AdminSettings(port=admin_port))
    cli.env["UCPUSH_ADMIN__PORT"] = str(admin_port)
    async with await open_store(cli.store_url) as store:
        signin = SigninService.from_settings(settings, store.signin)
        async with run_admin(settings, store, signin):
            status = await cli("service", "status")
    assert status.exit_code == 1  # SIP, sign-in and local push are not running here
    admin_row = next(line for line in status.output.splitlines() if "admin page" in line)
    assert "running" in admin_row
    sip_row = next(line for line in status.output.splitlines() if "SIP TCP" in line)
    assert "not answering" in sip_row
    assert "Onboarding Pending" in status.output and "no active alarms" in status.output

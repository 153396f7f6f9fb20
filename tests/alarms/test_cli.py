"""``ucpush alarms ...``: settings persisted for running nodes, one-line errors, listing, and
``pushnow`` answered by a running node's alarm center (the CLI as a real process)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from tests.relay.conftest import Stack
from ucpush.alarms import clear_alarm, raise_alarm
from ucpush.alarms.center import AlarmCenter
from ucpush.alarms.uploader import RelayTarget
from ucpush.cli.main import app
from ucpush.config import AlarmSettings
from ucpush.relay.client import RelayClient
from ucpush.store import Store, open_store

Invoke = Callable[..., Result]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.setenv("UCPUSH_STORE__URL", f"sqlite+aiosqlite:///{tmp_path / 'node.db'}")
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True, stdin: str | None = None) -> Result:
        result = runner.invoke(app, ["alarms", *args], input=stdin)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def one_line_error(result: Result, text: str) -> None:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.output


def test_settings_persist_and_bad_values_are_one_line(run: Invoke) -> None:
    one_line_error(run("pushfrequency", "4", ok=False), "must be 5..90 minutes, got 4")
    one_line_error(run("pushfrequency", "91", ok=False), "5..90")
    one_line_error(run("minpushlevel", "Alert", ok=False), "Critical, Error, Warning, Notice")
    status = run("status").output
    assert "30 min" in status and "config" in status and "Error" in status
    assert "every 45 minutes" in run("pushfrequency", "45").output
    assert "Warning" in run("minpushlevel", "warning").output
    status = run("status").output
    assert "45 min" in status and "Warning" in status and "config" not in status


def test_list_shows_active_and_history(run: Invoke, tmp_path: Path) -> None:
    async def provoke() -> None:
        async with await open_store(f"sqlite+aiosqlite:///{tmp_path / 'node.db'}") as store:
            center = AlarmCenter(store.alarms, AlarmSettings(node_name="node-a"))
            async with center:
                raise_alarm("PushNotificationInvalidDeviceTokenResponse", device_id="d1")
                raise_alarm("LocalPushStartFailed", error="address in use")
                clear_alarm("LocalPushStartFailed")
                await center.flush()

    assert "no active alarms" in run("list").output
    asyncio.run(provoke())
    active = run("list").output
    assert "PushNotificationInvalidDeviceTokenResponse" in active and "device_id=d1" in active
    assert "LocalPushStartFailed" not in active
    assert "LocalPushStartFailed" in run("list", "--all").output
    rows = [json.loads(line) for line in run("list", "--all", "--json").output.splitlines()]
    assert sorted((r["name"], r["cleared_at"] is None) for r in rows) == [
        ("LocalPushStartFailed", False),
        ("PushNotificationInvalidDeviceTokenResponse", True),
    ]
    assert "node-b" not in run("list", "--node", "node-b").output
    assert "APNSAlarm" in run("catalogue").output


def test_pushnow_without_a_running_node_fails(run: Invoke) -> None:
    result = run("pushnow", "--timeout", "1", ok=False)
    one_line_error(result, "no running node answered within 1 s")
    assert "upload requested" in run("pushnow", "--no-wait").output


async def _cli(tmp_path: Path, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    env = {
        **os.environ,
        "UCPUSH_STORE__URL": f"sqlite+aiosqlite:///{tmp_path / 'node.db'}",
        "COLUMNS": "200",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ucpush",
        "alarms",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.parametrize("node_store_url", ["sqlite"], indirect=True)
async def test_pushnow_is_answered_by_the_running_node(
    stack: Stack, node_store: Store, tmp_path: Path
) -> None:
    settings = AlarmSettings(node_name="node-a", poll_seconds=0.1)
    client: RelayClient | None = None
    source = RelayTarget(lambda: client, "cluster-1", pii_support_token="tok-1")
    async with AlarmCenter(node_store.alarms, settings, source=source):
        raise_alarm("PushNotificationInvalidDeviceTokenResponse", device_id="d1", service="APNS")
        # Not onboarded yet: the node answers, with why nothing went.
        code, out = await _cli(tmp_path, "pushnow", "--timeout", "20")
        assert code == 1 and "not onboarded" in out, out
        async with await stack.enrolled_client() as client:
            code, out = await _cli(tmp_path, "pushnow", "--timeout", "20")
            assert code == 0 and "alarms uploaded" in out, out
            [got] = await stack.store.tenant_alarms.list_for_tenant(stack.tenant_id)
            assert got.name == "PushNotificationInvalidDeviceTokenResponse"

    # Support, on the relay, reads the tenant's alarms and (with the token) their PII.
    relay_env = {
        "UCPUSH_STORE__URL": f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}",
        "COLUMNS": "200",
    }
    runner = CliRunner()

    def invoke(*args: str, **kwargs: object) -> Result:
        # In a thread: the command runs its own event loop.
        return runner.invoke(app, ["alarms", "received", *args], **kwargs)  # type: ignore[arg-type]

    listing = await asyncio.to_thread(invoke, "--tenant", "acme", env=relay_env)
    assert listing.exit_code == 0 and "(encrypted)" in listing.output
    assert "device_id" not in listing.output
    opened = await asyncio.to_thread(
        invoke,
        "--tenant",
        "acme",
        "--pii-token-stdin",
        env=relay_env,
        input="tok-1\n",
    )
    assert opened.exit_code == 0 and '"device_id":"d1"' in opened.output, opened.output
    wrong = await asyncio.to_thread(
        invoke, "--tenant", "acme", "--pii-token-stdin", env=relay_env, input="not-the-token\n"
    )
    one_line_error(wrong, "cannot decrypt PII")
    nobody = await asyncio.to_thread(invoke, "--tenant", "nobody", env=relay_env)
    one_line_error(nobody, "no tenant named 'nobody'")


@pytest.mark.parametrize("node_store_url", ["sqlite"], indirect=True)
async def test_running_node_uploads_on_schedule(stack: Stack, node_store: Store) -> None:
    settings = AlarmSettings(node_name="node-a", poll_seconds=0.1)
    async with await stack.enrolled_client() as client:
        source = RelayTarget(lambda: client, "cluster-1")
        raise_alarm("StartFailed", error="logged only: no center yet")
        async with AlarmCenter(node_store.alarms, settings, source=source):
            raise_alarm("StartFailed", error="dispatcher failed")
            for _ in range(100):
                if await stack.store.tenant_alarms.list_for_tenant(stack.tenant_id):
                    break
                await asyncio.sleep(0.1)
    [got] = await stack.store.tenant_alarms.list_for_tenant(stack.tenant_id)
    assert (got.name, got.count, got.details) == ("StartFailed", 1, {"error": "dispatcher failed"})

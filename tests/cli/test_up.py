"""The newcomer's path: `ucpush up`, a voucher from the CLI, an encrypted push delivered."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ucpush.crypto import jwe
from ucpush.relay.client import RelayClient
from ucpush.relay.providers.base import Outcome, PushType

UCPUSH = [sys.executable, "-m", "ucpush"]


@pytest.fixture
def up(tmp_path: Path):
    env = {
        **os.environ,
        "UCPUSH_DATA_DIR": str(tmp_path / "data"),
        "UCPUSH_RELAY__PORT": "0",
        "UCPUSH_SIM__APNS_PORT": "0",
        "UCPUSH_SIM__APNS_SANDBOX_PORT": "0",
        "UCPUSH_SIM__FCM_PORT": "0",
        "COLUMNS": "200",
    }
    proc = subprocess.Popen(
        [*UCPUSH, "up"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops" in line:
            break
    text = "".join(lines)
    assert "ucpush is up" in text, text + (proc.stderr.read() if proc.poll() is not None else "")
    urls = dict(re.findall(r"│ (relay|sim apns)\s+│ (\S+)", text))
    yield env, urls
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    # Nothing secret or payload-like leaks into the logs.
    assert "BEGIN PRIVATE KEY" not in proc.stderr.read()


async def cli(env: dict[str, str], *args: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run, [*UCPUSH, *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


async def test_up_then_voucher_then_push(up):
    env, urls = up
    voucher = await cli(env, "relay", "voucher", "create", "--tenant", "local")
    code = re.search(r"^([A-Z2-7]{4}(?:-[A-Z2-7]{4}){5})$", voucher, re.M)
    assert code, voucher
    token = "c3" * 32
    async with httpx.AsyncClient(http1=False, http2=True) as sim:
        await sim.post(
            f"{urls['sim apns']}/_sim/devices",
            json={"token": token, "topic": "org.ucpush.softphone", "environment": "production"},
        )
        enrollment = await RelayClient.enroll(urls["relay"], code.group(1), "cluster-a")
        key = os.urandom(32)
        async with RelayClient(urls["relay"], enrollment.refresh_token) as client:
            result = await client.push(
                target=token,
                service="APNS",
                push_type=PushType.VOIP,
                payload={"caller": "Alice"},
                key=key,
            )
        assert result.outcome is Outcome.DELIVERED
        [delivery] = (await sim.get(f"{urls['sim apns']}/_sim/delivered")).json()
    body = json.loads(base64.b64decode(delivery["payload"]))
    assert json.loads(jwe.decrypt(body["jwe"], key)) == {"caller": "Alice"}
    listing = await cli(env, "relay", "tenant", "list")
    assert "local" in listing and "completed" in listing

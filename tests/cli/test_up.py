"""The newcomer's path: `ucpush up`, a voucher from the CLI, an encrypted push delivered."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
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


def start_up(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, str], dict[str, str]]:
    """``ucpush up`` in ``tmp_path`` on free ports; returns once it printed its table."""
    env = {
        **os.environ,
        "UCPUSH_DATA_DIR": str(tmp_path / "data"),
        "UCPUSH_RELAY__PORT": "0",
        "UCPUSH_SIM__APNS_PORT": "0",
        "UCPUSH_SIM__APNS_SANDBOX_PORT": "0",
        "UCPUSH_SIM__FCM_PORT": "0",
        "UCPUSH_SIP__UDP_PORT": "0",
        "UCPUSH_SIP__TCP_PORT": "0",
        "UCPUSH_SIGNIN__PORT": "0",
        "UCPUSH_LPNS__PORT": "0",
        "UCPUSH_ADMIN__PORT": "0",
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
    if "ucpush is up" not in text:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"ucpush up did not start:\n{text}\n{proc.stderr.read()[-5000:]}")  # type: ignore[union-attr]
    urls = dict(
        re.findall(
            r"│ (relay|sim apns|sign-in API|SIP UDP|local push|admin page|admin credentials"
            r"|onboarding)\s+│ (.+?)\s+│",
            text,
        )
    )
    return proc, env, urls


def stop_up(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    # The generated APNs signing key never leaks into the logs.
    key_lines = (tmp_path / "data" / "sim-credentials" / "AuthKey.p8").read_text().splitlines()
    logs = proc.stderr.read()  # type: ignore[union-attr]
    assert not any(line in logs for line in key_lines[1:-1])


@pytest.fixture
def up(tmp_path: Path):
    proc, env, urls = start_up(tmp_path)
    yield env, urls
    stop_up(proc, tmp_path)


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


async def test_up_runs_the_call_node(up):
    _, urls = up
    host, port = urls["SIP UDP"].rsplit(":", 1)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{sock.getsockname()[1]};branch=z9hG4bKup1;rport\r\n"
            "From: <sip:probe@localhost>;tag=1\r\nTo: <sip:probe@localhost>\r\n"
            "Call-ID: up-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        sock.sendto(request, (host, int(port)))
        answer = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
    assert answer.startswith(b"SIP/2.0 200 ")
    async with httpx.AsyncClient() as api:
        unauthenticated = await api.get(f"{urls['sign-in API']}/v1/config")
    assert unauthenticated.status_code == 401
    assert urls["local push"].startswith("ws://127.0.0.1:")


async def test_up_onboards_its_node_and_serves_the_admin_page(up):
    env, urls = up
    assert urls["onboarding"].startswith("Onboarding Completed"), urls
    credentials = await asyncio.to_thread(Path(urls["admin credentials"]).read_text)
    username, password = credentials.split()
    admin = urls["admin page"].removesuffix("/onboarding")
    async with httpx.AsyncClient(
        base_url=admin, auth=httpx.BasicAuth(username, password), timeout=30
    ) as api:
        state = (await api.get("/api/v1/onboarding")).json()
        assert state["status"] == "completed" and state["push_enabled"]
        assert state["relay_url"] == urls["relay"]
        # Generate Voucher works here: the relay runs beside the node.
        voucher = (await api.post("/api/v1/onboarding/voucher")).json()["voucher"]
        assert re.fullmatch(r"[A-Z2-7]{4}(-[A-Z2-7]{4}){5}", voucher)
    # The node's relay client works: the CLI fetches an access token with its refresh token.
    refreshed = await cli(env, "onboarding", "refresh")
    assert "Onboarding Completed" in refreshed


def test_restarts_keep_one_machine_account(tmp_path: Path):
    # The relay's port changes between starts (port 0): the node onboards again, and gives
    # the old account back rather than leaving it active.
    for _ in range(2):
        proc, env, urls = start_up(tmp_path)
        assert urls["onboarding"].startswith("Onboarding Completed"), urls
        stop_up(proc, tmp_path)
    listing = subprocess.run(
        [*UCPUSH, "relay", "tenant", "list"], env=env, capture_output=True, text=True, check=True
    ).stdout
    [row] = [line for line in listing.splitlines() if "│ local" in line]
    assert [cell.strip() for cell in row.split("│")][2:4] == ["completed", "1"], listing

"""``relay.workers``: several relay processes on one port (SO_REUSEPORT), every push still
delivered exactly once, and SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sip.sipp_harness import free_port
from ucpush.config import SimSettings, load_settings
from ucpush.crypto import jwe
from ucpush.relay.client import RelayClient
from ucpush.relay.onboarding import ensure_tenant
from ucpush.relay.providers.base import Outcome, PushType
from ucpush.sim.cli import run_simulators
from ucpush.sim.credentials import make_apns_key
from ucpush.store import open_store
from ucpush.store.repository import ProviderApp

pytestmark = pytest.mark.timeout(60)
TEAM, KEY_ID, BUNDLE = "WORKERTEAM", "WORKERKEY1", "org.example.workers"


def listeners(port: int) -> set[int]:
    """PIDs with a listening TCP socket on ``port``."""
    out = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


async def test_two_workers_share_the_port_and_deliver_every_push(tmp_path: Path) -> None:
    sims = await run_simulators(SimSettings(tls=True, apns_port=0, apns_sandbox_port=0, fcm_port=0))
    relay_proc: asyncio.subprocess.Process | None = None
    try:
        assert sims.ca_pem is not None
        ca_file = tmp_path / "sim-ca.pem"
        ca_file.write_bytes(sims.ca_pem)
        private_pem, public_pem = make_apns_key()
        p8 = tmp_path / "AuthKey.p8"
        p8.write_bytes(private_pem)
        sims.apns.add_signing_key(TEAM, KEY_ID, public_pem)
        tokens = [f"{i:064x}" for i in range(40)]
        for token in tokens:
            sims.apns.register_device(token, BUNDLE)
        port = free_port()
        config = tmp_path / "relay.toml"
        config.write_text(
            f'data_dir = "{tmp_path / "relay"}"\n[relay]\nport = {port}\nworkers = 2\n'
            f'apns_production_url = "{sims.apns.url}"\nprovider_ca_file = "{ca_file}"\n'
        )
        settings = load_settings(config)
        async with await open_store(settings.store_url) as store:
            tenant = await ensure_tenant(store.relay, "acme")
            await store.relay.put_app(
                ProviderApp(tenant.id, "APNS", BUNDLE, str(p8), "production", TEAM, KEY_ID)
            )
        ucpush = [sys.executable, "-m", "ucpush", "--config", str(config)]
        relay_proc = await asyncio.create_subprocess_exec(
            *ucpush, "relay", "serve", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            if len(listeners(port)) == 2:
                break
            assert relay_proc.returncode is None, "relay exited while starting"
            await asyncio.sleep(0.1)
        workers = listeners(port)
        assert len(workers) == 2 and relay_proc.pid in workers
        created = await asyncio.to_thread(
            subprocess.run,
            [*ucpush, "relay", "voucher", "create", "--tenant", "acme"],
            capture_output=True,
            text=True,
            check=True,
        )
        voucher = created.stdout.splitlines()[1]
        enrollment = await RelayClient.enroll(url, voucher, "cluster-w")
        payload = jwe.encrypt(json.dumps({"type": "call"}).encode(), os.urandom(32), kid="k")

        async def one_client(batch: list[str]) -> list[Outcome]:
            # A client of its own: a new connection the kernel hands to either worker.
            async with RelayClient(url, enrollment.refresh_token) as client:
                return [
                    (
                        await client.send_encrypted(
                            target=t, service="APNS", push_type=PushType.VOIP, jwe_payload=payload
                        )
                    ).outcome
                    for t in batch
                ]

        results = await asyncio.gather(*(one_client(tokens[i::8]) for i in range(8)))
        assert [o for batch in results for o in batch] == [Outcome.DELIVERED] * len(tokens)
        assert sorted(d.token for d in sims.apns.delivered) == sorted(tokens)
        relay_proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(relay_proc.wait(), 15) == 0
        for _ in range(100):
            if not listeners(port):
                break
            await asyncio.sleep(0.1)
        assert listeners(port) == set()  # the worker stopped with it
    finally:
        if relay_proc is not None and relay_proc.returncode is None:
            relay_proc.kill()
            await relay_proc.wait()
        await sims.stop()

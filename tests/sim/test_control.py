"""The /_sim/ control API, in process and against `ucpush sim serve` run as a subprocess."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import ssl
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from google.oauth2 import service_account

from tests.sim.conftest import BUNDLE, TOKEN, ApnsEnv, FcmEnv
from ucpush.sim.common import Fault
from ucpush.sim.credentials import FCM_SCOPE, make_apns_key, make_service_account

NEW_TOKEN = "c3" * 32


async def test_apns_control_api(apns: ApnsEnv) -> None:
    base = apns.sim.url + "/_sim"
    client = apns.client
    assert (await client.get(base + "/health")).json() == {"status": "ok"}

    private, public = make_apns_key()
    response = await client.post(
        base + "/keys",
        json={"team_id": "TEAM999999", "key_id": "KEY9999999", "public_key_pem": public.decode()},
    )
    assert response.status_code == 204
    response = await client.post(base + "/devices", json={"token": NEW_TOKEN, "topic": BUNDLE})
    assert response.status_code == 204

    token = jwt.encode(
        {"iss": "TEAM999999", "iat": int(apns.clock())},
        private,
        algorithm="ES256",
        headers={"kid": "KEY9999999"},
    )
    async with apns.new_client() as fresh:  # one provider token per connection
        payload = b'{"aps":{"alert":"\xe2\x9c\x93"}}'
        response = await apns.push(
            token=NEW_TOKEN, payload=payload, client=fresh, authorization=f"bearer {token}"
        )
        assert response.status_code == 200

        delivered = (await client.get(base + "/delivered")).json()
        assert len(delivered) == 1
        assert base64.b64decode(delivered[0]["payload"]) == payload
        assert delivered[0]["token"] == NEW_TOKEN
        assert delivered[0]["topic"] == BUNDLE
        assert delivered[0]["environment"] == "production"

        assert (await client.delete(base + "/delivered")).status_code == 204
        assert (await client.get(base + "/delivered")).json() == []

        response = await client.post(
            base + "/faults", json={"kind": "status", "status": 503, "retry_after": 3}
        )
        assert response.status_code == 204
        response = await apns.push(token=NEW_TOKEN, client=fresh, authorization=f"bearer {token}")
        assert (response.status_code, response.headers["retry-after"]) == (503, "3")
        assert response.json() == {"reason": "ServiceUnavailable"}

        await client.post(base + "/faults", json={"kind": "reset", "count": 2})
        assert (await client.delete(base + "/faults")).status_code == 204

        response = await client.delete(base + f"/devices/{NEW_TOKEN}?timestamp_ms=42")
        assert response.status_code == 204
        response = await apns.push(token=NEW_TOKEN, client=fresh, authorization=f"bearer {token}")
        assert response.json() == {"reason": "Unregistered", "timestamp": 42}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/_sim/devices", {"token": "xyz", "topic": BUNDLE}),
        ("POST", "/_sim/devices", {"token": NEW_TOKEN}),
        ("POST", "/_sim/devices", {"token": NEW_TOKEN, "topic": BUNDLE, "environment": "qa"}),
        ("POST", "/_sim/devices", [1]),
        ("POST", "/_sim/keys", {"team_id": "T", "key_id": "K", "public_key_pem": "nope"}),
        ("POST", "/_sim/faults", {"kind": "explode"}),
        ("POST", "/_sim/faults", {"kind": "status", "count": 0}),
        ("POST", "/_sim/faults", {"kind": "status", "colour": 1}),
        ("DELETE", f"/_sim/devices/{NEW_TOKEN}", None),
    ],
)
async def test_apns_control_errors(apns: ApnsEnv, method: str, path: str, body: object) -> None:
    response = await apns.client.request(method, apns.sim.url + path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]


async def test_control_unknown_endpoint(apns: ApnsEnv) -> None:
    response = await apns.client.get(apns.sim.url + "/_sim/nothing")
    assert response.status_code == 404
    # Control requests never consume faults.
    apns.sim.inject(Fault("reset"))
    assert (await apns.client.get(apns.sim.url + "/_sim/health")).status_code == 200
    assert len(apns.sim.faults) == 1


async def test_fcm_control_api(fcm: FcmEnv) -> None:
    base = fcm.sim.url + "/_sim"
    info, public = make_service_account("proj-two", fcm.sim.token_uri)
    response = await fcm.client.post(
        base + "/accounts",
        json={
            "client_email": info["client_email"],
            "project_id": "proj-two",
            "public_key_pem": public.decode(),
            "private_key_id": info["private_key_id"],
        },
    )
    assert response.status_code == 204
    assert (
        await fcm.client.post(base + "/devices", json={"token": "t2", "project_id": "proj-two"})
    ).status_code == 204

    credentials = service_account.Credentials.from_service_account_info(info, scopes=[FCM_SCOPE])
    await asyncio.to_thread(credentials.refresh, fcm.google_request)
    url = f"{fcm.sim.url}/v1/projects/proj-two/messages:send"
    body = b'{"message":{"token":"t2","data":{"k":"v"}}}'
    response = await fcm.send(body, url=url, token=credentials.token)
    assert response.status_code == 200

    delivered = (await fcm.client.get(base + "/delivered")).json()
    assert len(delivered) == 1
    assert base64.b64decode(delivered[0]["raw"]) == body
    assert delivered[0]["message"] == {"token": "t2", "data": {"k": "v"}}
    assert delivered[0]["project_id"] == "proj-two"

    await fcm.client.post(
        base + "/faults",
        json={"kind": "status", "status": 429, "fcm_error": "QUOTA_EXCEEDED", "retry_after": 60},
    )
    response = await fcm.send(body, url=url, token=credentials.token)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "60"

    assert (await fcm.client.delete(base + "/devices/t2")).status_code == 204
    response = await fcm.send(body, url=url, token=credentials.token)
    assert response.status_code == 404
    assert (await fcm.client.delete(base + "/delivered")).status_code == 204
    assert fcm.sim.delivered == []
    response = await fcm.client.post(base + "/accounts", json={"client_email": "x"})
    assert response.status_code == 400


@pytest.mark.parametrize("tls", [False, True])
async def test_serve_subprocess(tmp_path: Path, tls: bool) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "UCPUSH_CONFIG"},
        "UCPUSH_DATA_DIR": str(tmp_path),
        "UCPUSH_SIM__APNS_PORT": "0",
        "UCPUSH_SIM__APNS_SANDBOX_PORT": "0",
        "UCPUSH_SIM__FCM_PORT": "0",
        "UCPUSH_SIM__TLS": "true" if tls else "false",
        "COLUMNS": "200",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from ucpush.sim.cli import app; app()",
        "serve",
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,  # no ucpush.toml there: defaults plus the environment above
    )
    assert process.stdout is not None
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while "Ctrl-C" not in urls.get("_last", "") and time.monotonic() < deadline:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if not line:
            break
        urls["_last"] = line
        match = re.match(r"(\w+)\s+(\S+)$", line.strip())
        if match:
            urls[match.group(1)] = match.group(2)
    try:
        assert "apns" in urls, f"simulators did not start: {urls}"
        assert urls["apns"].startswith("https://" if tls else "http://")
        verify: ssl.SSLContext | bool = False
        if tls:
            verify = ssl.create_default_context(cafile=urls["ca_file"])
        async with httpx.AsyncClient(http1=False, http2=True, verify=verify) as client:
            for name in ("apns", "apns_sandbox", "fcm"):
                response = await client.get(urls[name] + "/_sim/health")
                assert response.json() == {"status": "ok"}, name
            await client.post(
                urls["apns"] + "/_sim/devices", json={"token": TOKEN, "topic": BUNDLE}
            )
            response = await client.post(urls["apns_sandbox"] + f"/3/device/{TOKEN}", content=b"{}")
            # Shared registry: the sandbox knows the token belongs to production.
            assert response.status_code == 403  # no provider token yet
            assert json.loads(response.content)["reason"] == "MissingProviderToken"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
    assert process.returncode == 0


async def test_apns_keys_rejects_non_p256(
    apns: ApnsEnv, service_account_key: tuple[dict[str, str], bytes]
) -> None:
    rsa_public = service_account_key[1].decode()
    response = await apns.client.post(
        apns.sim.url + "/_sim/keys",
        json={"team_id": "T", "key_id": "K", "public_key_pem": rsa_public},
    )
    assert response.status_code == 400
    assert "P-256" in response.json()["error"]

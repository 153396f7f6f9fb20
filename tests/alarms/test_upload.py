"""The alarm uploader end to end: a node's alarm center uploading to a real relay over TLS,
which stores the alarms under the tenant of the machine account; PII sealed with the support
token; the relay-side alarms the uploader itself detects (relay stopped, refresh token
revoked), raised and then cleared."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.relay.conftest import Stack
from ucpush.alarms import clear_alarm, raise_alarm
from ucpush.alarms.center import AlarmCenter
from ucpush.alarms.pii import seal, unseal
from ucpush.alarms.store import TenantAlarm
from ucpush.alarms.uploader import RelayTarget
from ucpush.config import AlarmSettings, RelaySettings, Settings
from ucpush.crypto.jwe import JweDecryptError
from ucpush.relay.client import RelayClient
from ucpush.relay.server import run_relay
from ucpush.store import Store

PII_TOKEN = "support-token-of-cluster-1"
INVALID_TOKEN = "PushNotificationInvalidDeviceTokenResponse"
UNAVAILABLE = "PushNotificationServiceAccessTokenUnavailable"
SETTINGS = AlarmSettings(node_name="node-a")


def center_for(
    node_store: Store, client: RelayClient | None, *, pii: str = PII_TOKEN, cluster: str = ""
) -> AlarmCenter:
    source = RelayTarget(lambda: client, cluster or "cluster-1", pii_support_token=pii)
    return AlarmCenter(node_store.alarms, SETTINGS, source=source)


async def received(stack: Stack) -> dict[str, TenantAlarm]:
    return {a.name: a for a in await stack.store.tenant_alarms.list_for_tenant(stack.tenant_id)}


@pytest.mark.parametrize(
    ("relay_store_url", "node_store_url"),
    [("sqlite", "sqlite"), pytest.param("postgres", "postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_alarms_land_at_the_relay_with_pii_sealed(stack: Stack, node_store: Store) -> None:
    async with await stack.enrolled_client() as client, center_for(node_store, client) as center:
        raise_alarm(INVALID_TOKEN, device_id="iphone-7", service="APNS", paused=True)
        raise_alarm("LocalPushStartFailed", error="address in use")
        result = await center.push_now()
        assert (result.ok, result.sent) == (True, 2)

        got = await received(stack)
        assert set(got) == {INVALID_TOKEN, "LocalPushStartFailed"}
        invalid = got[INVALID_TOKEN]
        assert (invalid.cluster_id, invalid.node, invalid.severity) == (
            "cluster-1",
            "node-a",
            "ERROR",
        )
        assert invalid.details == {"service": "APNS", "paused": True}  # no device id in clear
        assert invalid.pii is not None and "iphone-7" not in invalid.pii
        assert unseal(invalid.pii, PII_TOKEN) == {"device_id": "iphone-7"}
        with pytest.raises(JweDecryptError):
            unseal(invalid.pii, "someone-elses-token")
        assert got["LocalPushStartFailed"].pii is None
        assert got["LocalPushStartFailed"].details == {"error": "address in use"}

        # Nothing changed: nothing sent. The clear goes up at the next upload.
        assert (await center.push_now()).sent == 0
        clear_alarm(INVALID_TOKEN, device_id="iphone-7")
        assert (await center.push_now()).sent == 1
        got = await received(stack)
        assert got[INVALID_TOKEN].cleared_at is not None
        assert got["LocalPushStartFailed"].cleared_at is None

    prefs = await node_store.alarms.prefs(datetime.now(UTC))
    assert prefs.push_result_at is not None and prefs.push_error == ""


async def test_min_level_and_pii_off(stack: Stack, node_store: Store) -> None:
    await node_store.alarms.set_min_push_level("Critical", datetime.now(UTC))
    async with (
        await stack.enrolled_client() as client,
        center_for(node_store, client, pii="") as center,
    ):
        raise_alarm(INVALID_TOKEN, device_id="iphone-7", service="APNS")  # ERROR: held back
        raise_alarm("APNSAlarm", device_id="iphone-8", reason="bad payload")  # ALERT: sent
        result = await center.push_now()
    assert result.sent == 1
    got = await received(stack)
    assert set(got) == {"APNSAlarm"}
    # PII encryption off: personal fields are not sent at all.
    assert got["APNSAlarm"].details == {"reason": "bad payload"} and got["APNSAlarm"].pii is None


async def test_nothing_is_sent_before_onboarding_or_when_switched_off(
    stack: Stack, node_store: Store
) -> None:
    async with center_for(node_store, None) as center:
        raise_alarm("StartFailed", error="x")
        result = await center.push_now()
    assert result.skipped and not result.error and result.sent == 0
    async with await stack.enrolled_client() as client:
        source = RelayTarget(lambda: client, "cluster-1", send_troubleshooting=False)
        async with AlarmCenter(node_store.alarms, SETTINGS, source=source) as center:
            assert "off" in (await center.push_now()).skipped
    assert await received(stack) == {}
    assert [a.name for a in await node_store.alarms.pending_upload("node-a", 6)] == ["StartFailed"]


async def test_wrong_cluster_is_refused_and_loses_nothing(stack: Stack, node_store: Store) -> None:
    async with await stack.enrolled_client() as client:
        async with center_for(node_store, client, cluster="cluster-2") as center:
            raise_alarm("StartFailed", error="x")
            result = await center.push_now()
        assert "409" in result.error and result.sent == 0
        assert await received(stack) == {}
        async with center_for(node_store, client) as center:
            assert (await center.push_now()).sent == 1
    assert set(await received(stack)) == {"StartFailed"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def relay_on(stack: Stack, tmp_path: Path, port: int) -> AsyncIterator[str]:
    """A second relay process-equivalent on ``port`` sharing the stack's store (so tokens
    survive its restarts), with the stack's TLS certificate."""
    settings = Settings(
        data_dir=tmp_path,
        relay=RelaySettings(
            port=port,
            public_url=f"https://127.0.0.1:{port}",
            tls_cert=str(tmp_path / "relay.pem"),
            tls_key=str(tmp_path / "relay.key"),
        ),
    )
    async with run_relay(settings, stack.store) as relay:
        yield relay.url


async def test_relay_stopped_raises_then_clears(
    stack: Stack, node_store: Store, tmp_path: Path
) -> None:
    port = _free_port()
    async with relay_on(stack, tmp_path, port) as url:
        voucher = await stack.voucher()
        enrollment = await RelayClient.enroll(url, voucher, "cluster-1", verify=stack.client_ssl())
    client = RelayClient(url, enrollment.refresh_token, verify=stack.client_ssl(), timeout=2.0)
    async with client, center_for(node_store, client) as center:
        raise_alarm("StartFailed", error="boom")
        # The relay is down.
        result = await center.push_now()
        assert result.error.startswith("relay unreachable")
        assert (UNAVAILABLE, "") in center.active()
        [stored] = [a for a in await node_store.alarms.list_alarms() if a.name == UNAVAILABLE]
        assert stored.details["cluster_id"] == "cluster-1"

        async with relay_on(stack, tmp_path, port):
            result = await center.push_now()
            assert result.ok and result.sent == 2  # StartFailed and the outage alarm
            assert (UNAVAILABLE, "") not in center.active()
            assert [a.name for a in await node_store.alarms.list_alarms()] == ["StartFailed"]
            # The clear itself reaches the relay with the next upload.
            assert (await center.push_now()).sent == 1
            # Else the relay's graceful shutdown waits for the client's kept-alive connection.
            await client.aclose()
        got = await received(stack)
        assert got[UNAVAILABLE].cleared_at is not None and got["StartFailed"].cleared_at is None


async def test_revoked_refresh_token_raises_access_token_invalid_until_replaced(
    stack: Stack, node_store: Store
) -> None:
    async with await stack.enrolled_client() as first:
        account_id = (await first.status())["account_id"]
        refresh = first.refresh_token
    await stack.store.relay.revoke_refresh_tokens(account_id, datetime.now(UTC))
    # A node (re)starting with the revoked token cannot get an access token.
    client = RelayClient(stack.relay.url, refresh, verify=stack.client_ssl())
    async with client, center_for(node_store, client) as center:
        result = await center.push_now()
        assert "invalid_grant" in result.error
        assert ("AccessTokenInvalid", "") in center.active()
        # The operator replaces the refresh token (ucpush relay account new-refresh-token).
        client.refresh_token = await stack.relay.service.identity.issue_refresh_token(account_id)
        result = await center.push_now()
        assert result.ok
        assert ("AccessTokenInvalid", "") not in center.active()
        await center.push_now()
    got = await received(stack)
    assert got["AccessTokenInvalid"].cleared_at is not None


async def test_upload_endpoint_refuses_bad_input(stack: Stack) -> None:
    async with await stack.enrolled_client() as client:
        token = await client.access_token()
    alarm = {
        "id": "a1",
        "name": "StartFailed",
        "severity": "CRITICAL",
        "raised_at": "2026-11-25T01:00:00+00:00",
        "last_raised_at": "2026-11-25T01:00:00+00:00",
        "count": 1,
        "details": {"error": "x"},
    }
    good = {"cluster_id": "cluster-1", "node": "n1", "alarms": [alarm]}
    bad_bodies = {
        "pii": {**good, "alarms": [{**alarm, "pii": "not-a-jwe"}]},
        "severity": {**good, "alarms": [{**alarm, "severity": "FATAL"}]},
        "raised_at": {**good, "alarms": [{**alarm, "raised_at": "2026-11-25T01:00:00"}]},
        "extra": {**good, "alarms": [{**alarm, "payload": "x"}]},
        "alarms": {**good, "alarms": "none"},
        "details": {**good, "alarms": [{**alarm, "details": {"k": {"nested": 1}}}]},
    }
    auth = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.relay.url, verify=stack.client_ssl()) as http:
        unauthenticated = await http.post("/v1/alarms", json=good)
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"] == "invalid_request"
        forged = await http.post("/v1/alarms", json=good, headers={"authorization": "Bearer x.y.z"})
        assert forged.status_code == 401
        for field, body in bad_bodies.items():
            response = await http.post("/v1/alarms", json=body, headers=auth)
            assert response.status_code == 400, (field, response.text)
            assert response.json()["error"] == "invalid_request"
            assert field in response.json()["detail"] or field == "extra", response.text
        not_json = await http.post("/v1/alarms", content=b"{", headers=auth)
        assert not_json.status_code == 400
        assert await received(stack) == {}
        sealed = {**alarm, "pii": seal({"device_id": "d"}, PII_TOKEN)}
        ok = await http.post("/v1/alarms", json={**good, "alarms": [sealed]}, headers=auth)
        assert ok.status_code == 200 and ok.json() == {"stored": 1}
        # Idempotent: the same alarm again updates its row.
        again = await http.post("/v1/alarms", json={**good, "alarms": [sealed]}, headers=auth)
        assert again.json() == {"stored": 1}
    assert len(await stack.store.tenant_alarms.list_for_tenant(stack.tenant_id)) == 1


async def test_many_alarms_go_in_batches_under_the_relay_body_limit(
    stack: Stack, node_store: Store
) -> None:
    settings = AlarmSettings(node_name="node-a", upload_batch_bytes=4096)
    async with await stack.enrolled_client() as client:
        source = RelayTarget(lambda: client, "cluster-1", pii_support_token=PII_TOKEN)
        async with AlarmCenter(node_store.alarms, settings, source=source) as center:
            for i in range(120):
                raise_alarm(INVALID_TOKEN, device_id=f"iphone-{i:03}", service="APNS", n=i)
            result = await center.push_now()
    assert result.ok and result.sent == 120
    stored = await stack.store.tenant_alarms.list_for_tenant(stack.tenant_id)
    assert len(stored) == 120
    devices = {unseal(a.pii or "", PII_TOKEN)["device_id"] for a in stored}
    assert devices == {f"iphone-{i:03}" for i in range(120)}

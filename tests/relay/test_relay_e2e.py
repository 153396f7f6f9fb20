"""End to end: voucher -> machine account -> tokens -> encrypted pushes -> simulators."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from ucpush.crypto import jwe
from ucpush.relay.client import RelayAuthError, RelayClient, RelayError
from ucpush.relay.identity import Identity
from ucpush.relay.providers.base import Outcome, PushType
from ucpush.sim.common import Fault
from ucpush.store.repository import TenantStatus

from .conftest import BUNDLE, DEVICE_KEY, FCM_PROJECT, Stack

APNS_TOKEN = "a1" * 32
FCM_TOKEN = "fcm-registration-token:APA91b-example_0123456789"


@pytest.mark.parametrize(
    "relay_store_url",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_voucher_onboarding_moves_tenant_to_completed(stack: Stack):
    tenant = await stack.store.relay.get_tenant(stack.tenant_id)
    assert tenant.status is TenantStatus.PENDING
    async with await stack.enrolled_client() as client:
        status = await client.status()
    assert status["tenant"] == "acme"
    assert status["status"] == "completed"
    assert status["cluster_id"] == "cluster-1"


@pytest.mark.parametrize(
    "relay_store_url",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_voip_push_reaches_apns_byte_exact(stack: Stack):
    stack.apns.register_device(APNS_TOKEN, BUNDLE)
    payload = {"callId": "c1", "caller": "Alice", "number": "+15551234"}
    token = jwe.encrypt(json.dumps(payload).encode(), DEVICE_KEY, kid="k1")
    async with await stack.enrolled_client() as client:
        result = await client.send_encrypted(
            target=APNS_TOKEN,
            service="APNS",
            push_type=PushType.VOIP,
            jwe_payload=token,
            tracking_id="trk-1",
        )
    assert result.outcome is Outcome.DELIVERED, result
    assert result.http_status == 200
    [delivery] = stack.apns.delivered
    assert delivery.topic == BUNDLE + ".voip"
    assert delivery.push_type == "voip"
    body = json.loads(delivery.payload)
    assert body["jwe"] == token
    assert result.provider_id == delivery.apns_id
    assert json.loads(jwe.decrypt(body["jwe"], DEVICE_KEY)) == payload


async def test_message_push_reaches_fcm_and_apns_sandbox(stack: Stack):
    stack.fcm.register_device(FCM_TOKEN, FCM_PROJECT)
    stack.apns_sandbox.register_device(APNS_TOKEN, BUNDLE)
    async with await stack.enrolled_client() as client:
        fcm = await client.push(
            target=FCM_TOKEN,
            service="FCM",
            push_type=PushType.MESSAGE,
            payload={"from": "bob@example.org", "count": 2},
            key=DEVICE_KEY,
        )
        dev = await client.push(
            target=APNS_TOKEN,
            service="APNS:dev",
            push_type=PushType.MESSAGE,
            payload=b"hi",
            key=DEVICE_KEY,
        )
    assert fcm.outcome is Outcome.DELIVERED and dev.outcome is Outcome.DELIVERED
    [delivered] = stack.fcm.delivered
    assert delivered.token == FCM_TOKEN
    data = delivered.message["data"]
    assert json.loads(jwe.decrypt(data["jwe"], DEVICE_KEY)) == {
        "from": "bob@example.org",
        "count": 2,
    }
    [sandbox] = stack.apns_sandbox.delivered
    assert jwe.decrypt(json.loads(sandbox.payload)["jwe"], DEVICE_KEY) == b"hi"
    assert stack.apns.delivered == []


async def test_plaintext_payload_is_rejected_and_nothing_sent(stack: Stack):
    stack.apns.register_device(APNS_TOKEN, BUNDLE)
    async with await stack.enrolled_client() as client:
        with pytest.raises(RelayError) as err:
            await client.send_encrypted(
                target=APNS_TOKEN,
                service="APNS",
                push_type=PushType.VOIP,
                jwe_payload='{"caller":"Alice"}',
            )
    assert err.value.status == 400
    assert "compact JWE" in err.value.detail
    assert "Alice" not in err.value.detail  # the payload is never echoed
    assert stack.apns.delivered == []


async def test_unregistered_token_is_reported_with_timestamp(stack: Stack):
    stack.apns.register_device(APNS_TOKEN, BUNDLE)
    stack.apns.unregister_device(APNS_TOKEN, timestamp_ms=1_700_000_000_000)
    stack.fcm.register_device(FCM_TOKEN, FCM_PROJECT)
    stack.fcm.unregister_device(FCM_TOKEN)
    async with await stack.enrolled_client() as client:
        apns = await client.push(
            target=APNS_TOKEN, service="APNS", push_type=PushType.VOIP, payload=b"x", key=DEVICE_KEY
        )
        fcm = await client.push(
            target=FCM_TOKEN, service="FCM", push_type=PushType.VOIP, payload=b"x", key=DEVICE_KEY
        )
    assert apns.outcome is Outcome.UNREGISTERED
    assert apns.http_status == 410
    assert apns.unregistered_at == 1_700_000_000_000
    assert fcm.outcome is Outcome.UNREGISTERED


async def test_sandbox_token_sent_to_production_is_bad_token_not_unregistered(stack: Stack):
    stack.apns_sandbox.register_device(APNS_TOKEN, BUNDLE)
    async with await stack.enrolled_client() as client:
        result = await client.push(
            target=APNS_TOKEN, service="APNS", push_type=PushType.VOIP, payload=b"x", key=DEVICE_KEY
        )
    assert result.outcome is Outcome.BAD_DEVICE_TOKEN
    assert result.reason == "BadDeviceToken"
    assert result.http_status == 422


async def test_expired_access_token_gets_401_and_client_refreshes(stack: Stack):
    stack.apns.register_device(APNS_TOKEN, BUNDLE)
    client = await stack.enrolled_client()
    async with client:
        account_id = (await client.status())["account_id"]
        # The same signing keys, an hour and a half ago: a token that has expired.
        past = Identity(
            stack.store.relay,
            issuer=stack.relay.url,
            access_ttl=3600,
            clock=lambda: time.time() - 5400,
        )
        await past.load()
        account = await stack.store.relay.get_machine_account(account_id)
        expired = past.issue_access_token(account).token
        async with httpx.AsyncClient(verify=stack.client_ssl()) as raw:
            response = await raw.get(
                f"{stack.relay.url}/v1/onboard", headers={"authorization": f"Bearer {expired}"}
            )
        assert response.status_code == 401
        assert "expired" in response.json()["detail"]
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        # The client believes its (expired) token is good; the 401 makes it refresh once.
        client._access = (expired, time.time() + 3000)
        result = await client.push(
            target=APNS_TOKEN, service="APNS", push_type=PushType.VOIP, payload=b"x", key=DEVICE_KEY
        )
        assert result.outcome is Outcome.DELIVERED


async def test_revoked_refresh_token_is_refused_and_replacement_works(stack: Stack):
    async with await stack.enrolled_client() as client:
        account_id = (await client.status())["account_id"]
        new = await stack.relay.service.onboarding.replace_refresh_token(account_id)
        with pytest.raises(RelayAuthError) as err:
            await client.access_token(force=True)
        assert err.value.error == "invalid_grant"
        assert "revoked" in err.value.detail
    async with RelayClient(stack.relay.url, new, verify=stack.client_ssl()) as replaced:
        assert (await replaced.status())["account_id"] == account_id


async def test_disable_push_then_onboard_again(stack: Stack):
    client = await stack.enrolled_client()
    async with client:
        await client.offboard()
        assert (await stack.store.relay.get_tenant(stack.tenant_id)).status is TenantStatus.PENDING
        with pytest.raises(RelayAuthError):
            await client.access_token(force=True)
    async with await stack.enrolled_client() as again:
        assert (await again.status())["status"] == "completed"


async def test_voucher_is_single_use_and_expires(stack: Stack):
    from datetime import timedelta

    code = await stack.voucher()
    ssl_ctx = stack.client_ssl()
    await RelayClient.enroll(stack.relay.url, code, "c1", verify=ssl_ctx)
    with pytest.raises(RelayError) as used:
        await RelayClient.enroll(stack.relay.url, code, "c2", verify=ssl_ctx)
    assert used.value.error == "voucher_used"
    expired = await stack.voucher(ttl=timedelta(seconds=-1))
    with pytest.raises(RelayError) as old:
        await RelayClient.enroll(stack.relay.url, expired, "c3", verify=ssl_ctx)
    assert old.value.error == "voucher_expired"
    with pytest.raises(RelayError) as unknown:
        await RelayClient.enroll(stack.relay.url, "NOPE-NOPE", "c4", verify=ssl_ctx)
    assert unknown.value.error == "voucher_unknown"
    # Vouchers are typed by people: case and dashes do not matter.
    sloppy = (await stack.voucher()).lower().replace("-", " ")
    assert (
        await RelayClient.enroll(stack.relay.url, sloppy, "c5", verify=ssl_ctx)
    ).tenant == "acme"


async def test_service_without_app_is_a_clear_404(stack: Stack):
    async with await stack.enrolled_client() as client:
        with pytest.raises(RelayError) as err:
            await client.push(
                target=APNS_TOKEN,
                service="APNS:beta",
                push_type=PushType.VOIP,
                payload=b"x",
                key=DEVICE_KEY,
            )
    assert err.value.status == 404
    assert err.value.error == "service_not_configured"
    assert "APNS:beta" in err.value.detail


async def test_oversized_voip_payload_is_refused_before_sending(stack: Stack):
    stack.apns.register_device(APNS_TOKEN, BUNDLE)
    async with await stack.enrolled_client() as client:
        with pytest.raises(RelayError) as err:
            await client.push(
                target=APNS_TOKEN,
                service="APNS",
                push_type=PushType.VOIP,
                payload=b"x" * 4000,
                key=DEVICE_KEY,
            )
    assert err.value.status == 413
    assert err.value.error == "payload_too_large"
    assert stack.apns.delivered == []


async def test_jwks_health_and_metrics(stack: Stack):
    async with httpx.AsyncClient(base_url=stack.relay.url, verify=stack.client_ssl()) as http:
        keys = (await http.get("/.well-known/jwks.json")).json()["keys"]
        assert keys and keys[0]["alg"] == "ES256" and keys[0]["crv"] == "P-256"
        assert (await http.get("/healthz")).json()["status"] == "ok"
        assert "ucpush_relay_pushes" in (await http.get("/metrics")).text
        spec = (await http.get("/openapi.json")).json()
        push_body = spec["paths"]["/v1/push"]["post"]["requestBody"]["content"]
        schema = push_body["application/json"]["schema"]
        assert {"target", "service", "push_type", "payload"} <= set(schema["required"])
        assert "voip" in schema["properties"]["push_type"]["enum"]
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert (await http.get("/v1/push")).status_code == 405


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="status", status=503, reason="ServiceUnavailable"),
        Fault(kind="status", status=500, reason="InternalServerError"),
        Fault(kind="status", status=429, reason="TooManyRequests", retry_after=0),
        Fault(kind="reset"),
        Fault(kind="goaway"),
    ],
    ids=lambda f: f"{f.kind}-{f.status}" if f.kind == "status" else f.kind,
)
async def test_transient_provider_faults_are_retried_and_delivered_once(stack: Stack, fault):
    stack.apns.register_device(APNS_TOKEN, BUNDLE)
    stack.apns.inject(fault)
    async with await stack.enrolled_client() as client:
        result = await client.push(
            target=APNS_TOKEN, service="APNS", push_type=PushType.VOIP, payload=b"x", key=DEVICE_KEY
        )
    assert result.outcome is Outcome.DELIVERED, result
    assert result.attempts == 2
    assert len(stack.apns.delivered) == 1


async def test_provider_down_after_retries_is_503_with_outcome(stack: Stack):
    stack.fcm.register_device(FCM_TOKEN, FCM_PROJECT)
    stack.fcm.inject(Fault(kind="status", status=503, fcm_error="UNAVAILABLE", count=10))
    async with await stack.enrolled_client() as client:
        result = await client.push(
            target=FCM_TOKEN, service="FCM", push_type=PushType.VOIP, payload=b"x", key=DEVICE_KEY
        )
    assert result.outcome is Outcome.PROVIDER_DOWN
    assert result.http_status == 503
    assert result.attempts == 3
    assert stack.fcm.delivered == []


async def test_fcm_quota_exceeded_is_throttled_for_at_least_a_minute(stack: Stack):
    stack.fcm.register_device(FCM_TOKEN, FCM_PROJECT)
    stack.fcm.inject(Fault(kind="status", status=429, fcm_error="QUOTA_EXCEEDED", retry_after=5))
    async with await stack.enrolled_client() as client:
        first = await client.push(
            target=FCM_TOKEN,
            service="FCM",
            push_type=PushType.MESSAGE,
            payload=b"x",
            key=DEVICE_KEY,
        )
        second = await client.push(
            target=FCM_TOKEN,
            service="FCM",
            push_type=PushType.MESSAGE,
            payload=b"x",
            key=DEVICE_KEY,
        )
    assert first.outcome is Outcome.THROTTLED and first.http_status == 429
    assert first.retry_after is not None and first.retry_after >= 60
    # The relay holds the project back without calling FCM again.
    assert second.outcome is Outcome.THROTTLED and second.attempts == 0
    assert stack.fcm.delivered == []

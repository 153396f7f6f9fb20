"""ApnsProvider against the APNs simulator over real HTTP/2 (h2c, and TLS with a test CA)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from structlog.testing import capture_logs

from ucpush.relay.providers.apns import ApnsProvider, build_body
from ucpush.relay.providers.base import Outcome, PayloadTooLarge, Priority, PushType
from ucpush.sim.apns import ApnsSimulator
from ucpush.sim.common import Fault
from ucpush.store.repository import ProviderApp

from .conftest import BUNDLE, KEY_ID, PAYLOAD, TEAM_ID, ApnsWorld, fast_settings, make_push

Factory = Callable[..., ApnsProvider]


def _with(app: ProviderApp, **changes: str) -> ProviderApp:
    return ProviderApp(**{**{f: getattr(app, f) for f in app.__slots__}, **changes})


async def test_message_delivered_byte_exact(apns_world: ApnsWorld, apns_provider: ApnsProvider):
    token = apns_world.device()
    push = make_push(apns_world.app, token, collapse_id="thread-7")
    result = await apns_provider.send(push)
    assert result.outcome is Outcome.DELIVERED
    assert result.status == 200
    assert result.attempts == 1
    [delivery] = apns_world.production.delivered
    assert delivery.payload == build_body(push)
    assert delivery.token == token
    assert delivery.topic == BUNDLE
    assert delivery.push_type == "alert"
    assert delivery.priority == 10
    assert delivery.collapse_id == "thread-7"
    assert delivery.expiration is None
    assert delivery.apns_id == result.provider_id


async def test_voip_push_uses_voip_topic(apns_world: ApnsWorld, apns_provider: ApnsProvider):
    token = apns_world.device()
    push = make_push(apns_world.app, token, push_type=PushType.VOIP)
    result = await apns_provider.send(push)
    assert result.outcome is Outcome.DELIVERED
    [delivery] = apns_world.production.delivered
    assert delivery.topic == BUNDLE + ".voip"
    assert delivery.push_type == "voip"
    assert delivery.expiration == 0
    assert json.loads(delivery.payload) == {
        "aps": {},
        "jwe": PAYLOAD,
        "type": "voip",
        "tid": push.tracking_id,
    }


async def test_cancel_is_a_normal_priority_alert(
    apns_world: ApnsWorld, apns_provider: ApnsProvider
):
    push = make_push(
        apns_world.app,
        apns_world.device(),
        push_type=PushType.CANCEL,
        priority=Priority.NORMAL,
        expiration=int(apns_world.clock.now) + 60,
    )
    assert (await apns_provider.send(push)).outcome is Outcome.DELIVERED
    [delivery] = apns_world.production.delivered
    assert (delivery.push_type, delivery.priority) == ("alert", 5)
    assert delivery.expiration == int(apns_world.clock.now) + 60


async def test_sandbox_token_sent_to_production_is_bad_device_token(
    apns_world: ApnsWorld, apns_provider: ApnsProvider
):
    token = apns_world.device("sandbox")
    result = await apns_provider.send(make_push(apns_world.app, token))
    assert result.outcome is Outcome.BAD_DEVICE_TOKEN
    assert result.reason == "BadDeviceToken"
    assert result.attempts == 1
    sandbox_app = _with(apns_world.app, service="APNS:dev", environment="sandbox")
    result = await apns_provider.send(make_push(sandbox_app, token))
    assert result.outcome is Outcome.DELIVERED
    assert len(apns_world.sandbox.delivered) == 1
    assert apns_world.production.delivered == []


async def test_unregistered_token_reports_timestamp(
    apns_world: ApnsWorld, apns_provider: ApnsProvider
):
    token = apns_world.device()
    apns_world.production.unregister_device(token, timestamp_ms=1_799_999_000_123)
    result = await apns_provider.send(make_push(apns_world.app, token))
    assert result.outcome is Outcome.UNREGISTERED
    assert result.status == 410
    assert result.unregistered_at == 1_799_999_000_123


@pytest.mark.parametrize("target", ["../../_sim/health", "not-hex", ""])
async def test_malformed_token_is_never_sent(
    apns_world: ApnsWorld, apns_provider: ApnsProvider, target: str
):
    result = await apns_provider.send(make_push(apns_world.app, target))
    assert (result.outcome, result.attempts) == (Outcome.BAD_DEVICE_TOKEN, 0)


async def test_unknown_environment_is_rejected(apns_world: ApnsWorld, apns_provider: ApnsProvider):
    app = _with(apns_world.app, environment="staging")
    result = await apns_provider.send(make_push(app, apns_world.device()))
    assert (result.outcome, result.reason, result.attempts) == (
        Outcome.REJECTED,
        "UnknownEnvironment",
        0,
    )


async def test_wrong_topic_is_rejected(apns_world: ApnsWorld, apns_provider: ApnsProvider):
    token = apns_world.device(topic="org.example.other")
    result = await apns_provider.send(make_push(apns_world.app, token))
    assert result.outcome is Outcome.REJECTED
    assert (result.status, result.reason) == (400, "DeviceTokenNotForTopic")


async def test_unknown_key_is_rejected(apns_world: ApnsWorld, apns_provider: ApnsProvider):
    app = _with(apns_world.app, key_id="UNKNOWNKEY")
    result = await apns_provider.send(make_push(app, apns_world.device()))
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "InvalidProviderToken")


async def test_missing_key_file_is_rejected_without_sending(
    apns_world: ApnsWorld, apns_provider: ApnsProvider, tmp_path: Path
):
    app = _with(apns_world.app, credentials_file=str(tmp_path / "nope.p8"), key_id="NOPE")
    result = await apns_provider.send(make_push(app, apns_world.device()))
    assert (result.outcome, result.reason, result.attempts) == (
        Outcome.REJECTED,
        "ProviderKeyUnusable",
        0,
    )


async def test_payload_too_large_is_raised_before_sending(
    apns_world: ApnsWorld, apns_provider: ApnsProvider
):
    with pytest.raises(PayloadTooLarge):
        await apns_provider.send(make_push(apns_world.app, apns_world.device(), payload="x" * 4096))
    assert apns_world.production.delivered == []


async def test_expired_token_renewed_once_and_retried(
    apns_world: ApnsWorld, apns_provider_factory: Factory
):
    """Our clock lags APNs': APNs calls the token expired although we think it is fresh."""
    relay_clock = type(apns_world.clock)(apns_world.clock.now)
    provider = apns_provider_factory(clock=relay_clock)
    token = apns_world.device()
    assert (await provider.send(make_push(apns_world.app, token))).attempts == 1

    apns_world.clock.advance(3700)
    relay_clock.advance(200)
    result = await provider.send(make_push(apns_world.app, token))
    assert result.outcome is Outcome.DELIVERED
    assert result.attempts == 2
    assert len(apns_world.production.delivered) == 2

    # Still "expired" a minute later: renewing again would only churn tokens; give up.
    apns_world.clock.advance(3700)
    relay_clock.advance(60)
    result = await provider.send(make_push(apns_world.app, token))
    assert (result.outcome, result.reason, result.attempts) == (
        Outcome.REJECTED,
        "ExpiredProviderToken",
        1,
    )


async def test_no_token_update_errors_over_hours_of_traffic(
    apns_world: ApnsWorld, apns_provider: ApnsProvider
):
    """Bursts spread over every connection while tokens roll over: never a 429."""
    tokens = [apns_world.device() for _ in range(24)]
    for _ in range(20):  # 20 x 10 min
        results = await asyncio.gather(
            *(apns_provider.send(make_push(apns_world.app, t)) for t in tokens)
        )
        assert {(r.outcome, r.attempts) for r in results} == {(Outcome.DELIVERED, 1)}
        apns_world.clock.advance(600)
    assert len(apns_world.production.delivered) == 20 * 24


async def test_connection_opened_late_recovers_from_token_update_block(
    apns_world: ApnsWorld, apns_provider_factory: Factory
):
    """A connection replaced shortly before the token rolls over is blocked by APNs' 20-minute
    rule; the push moves to a fresh connection instead of failing."""
    provider = apns_provider_factory(apns_connections=1)
    token = apns_world.device()
    assert (await provider.send(make_push(apns_world.app, token))).attempts == 1
    apns_world.clock.advance(2900)
    apns_world.production.inject(Fault("reset"))  # the replacement adopts the old token late
    assert (await provider.send(make_push(apns_world.app, token))).attempts == 2
    apns_world.clock.advance(200)  # token renewed: the young connection may not switch yet
    result = await provider.send(make_push(apns_world.app, token))
    assert (result.outcome, result.attempts) == (Outcome.DELIVERED, 2)
    assert len(apns_world.production.delivered) == 3


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", status=429, reason="TooManyRequests"),
        Fault("status", status=500),
        Fault("status", status=503, reason="ServiceUnavailable", count=2),
        Fault("status", status=503, retry_after=1),
        Fault("reset"),
        Fault("reset", count=2),
        Fault("status", status=429, reason="TooManyProviderTokenUpdates"),
    ],
    ids=["429", "500", "503x2", "503-retry-after", "reset", "reset-x2", "token-updates"],
)
async def test_transient_failures_are_retried_and_delivered_once(
    apns_world: ApnsWorld, apns_provider: ApnsProvider, fault: Fault
):
    token = apns_world.device()
    apns_world.production.inject(fault)
    result = await apns_provider.send(make_push(apns_world.app, token, push_type=PushType.VOIP))
    assert result.outcome is Outcome.DELIVERED
    assert result.attempts == fault.count + 1
    assert len(apns_world.production.delivered) == 1


async def test_goaway_is_retried_and_delivered_once(
    apns_world: ApnsWorld, apns_provider: ApnsProvider
):
    token = apns_world.device()
    # Warm the connection so the GOAWAY hits an established one, as in production.
    await apns_provider.send(make_push(apns_world.app, token))
    apns_world.production.inject(Fault("goaway"))
    result = await apns_provider.send(make_push(apns_world.app, token, push_type=PushType.VOIP))
    assert result.outcome is Outcome.DELIVERED
    assert [d.push_type for d in apns_world.production.delivered] == ["alert", "voip"]


async def test_persistent_outage_is_provider_down(
    apns_world: ApnsWorld, apns_provider: ApnsProvider
):
    apns_world.production.inject(Fault("status", status=503, count=5))
    result = await apns_provider.send(make_push(apns_world.app, apns_world.device()))
    assert (result.outcome, result.status, result.attempts) == (Outcome.PROVIDER_DOWN, 503, 3)
    assert apns_world.production.delivered == []


async def test_long_retry_after_is_returned_not_waited(
    apns_world: ApnsWorld, apns_provider: ApnsProvider
):
    apns_world.production.inject(
        Fault("status", status=429, reason="TooManyRequests", retry_after=30)
    )
    result = await apns_provider.send(make_push(apns_world.app, apns_world.device()))
    assert (result.outcome, result.retry_after, result.attempts) == (Outcome.THROTTLED, 30.0, 1)
    assert apns_world.production.delivered == []


async def test_lost_response_is_retried_with_the_same_apns_id(
    apns_world: ApnsWorld, apns_provider_factory: Factory
):
    """APNs has no idempotency: a timed-out request may still be delivered. The retry reuses the
    apns-id so the duplicate is at least recognisable (the accepted trade-off for calls)."""
    provider = apns_provider_factory(request_timeout=0.2)
    apns_world.production.inject(Fault("latency", delay=0.5))
    result = await provider.send(make_push(apns_world.app, apns_world.device()))
    assert (result.outcome, result.attempts) == (Outcome.DELIVERED, 2)
    await asyncio.sleep(0.5)  # the slow first request completes on the simulator
    ids = {d.apns_id for d in apns_world.production.delivered}
    assert ids == {result.provider_id}


async def test_five_hundred_concurrent_pushes(apns_world: ApnsWorld, apns_provider: ApnsProvider):
    tokens = [apns_world.device() for _ in range(50)]
    pushes = [make_push(apns_world.app, tokens[i % 50], tracking_id=f"p{i}") for i in range(500)]
    results = await asyncio.gather(*(apns_provider.send(p) for p in pushes))
    assert all(r.outcome is Outcome.DELIVERED for r in results)
    delivered = apns_world.production.delivered
    assert len(delivered) == 500
    assert sorted(json.loads(d.payload)["tid"] for d in delivered) == sorted(
        p.tracking_id for p in pushes
    )


async def test_logs_never_contain_payload_or_full_token(
    apns_world: ApnsWorld, apns_provider: ApnsProvider
):
    token = apns_world.device()
    with capture_logs() as logs:
        await apns_provider.send(make_push(apns_world.app, token, tracking_id="trk-1"))
    [entry] = [e for e in logs if e["event"] == "push_result"]
    assert entry["tracking_id"] == "trk-1"
    assert entry["outcome"] == "delivered"
    assert entry["token"] == token[:8]
    assert "latency_ms" in entry
    text = repr(logs)
    assert token not in text
    assert PAYLOAD not in text


def _server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.set_alpn_protocols(["h2"])
    return context


async def test_tls_with_provider_ca_file(
    apns_key: tuple[Path, bytes], apns_app: ProviderApp, tmp_path: Path
):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with ApnsSimulator("production", ssl_context=_server_ssl(ca)) as sim:
        assert sim.url.startswith("https://")
        sim.add_signing_key(TEAM_ID, KEY_ID, apns_key[1])
        token = "ab" * 32
        sim.register_device(token, BUNDLE)

        trusting = ApnsProvider(
            fast_settings(apns_production_url=sim.url, provider_ca_file=str(ca_file))
        )
        untrusting = ApnsProvider(fast_settings(apns_production_url=sim.url))
        try:
            result = await trusting.send(make_push(apns_app, token))
            assert result.outcome is Outcome.DELIVERED
            result = await untrusting.send(make_push(apns_app, token))
            assert (result.outcome, result.reason) == (Outcome.PROVIDER_DOWN, "connect_error")
        finally:
            await trusting.aclose()
            await untrusting.aclose()
        assert len(sim.delivered) == 1

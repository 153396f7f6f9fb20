"""FcmProvider against the FCM simulator (send API and OAuth2 token endpoint) over HTTP/2."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from structlog.testing import capture_logs

from ucpush.relay.providers.base import Outcome, PayloadTooLarge, Priority, PushType
from ucpush.relay.providers.fcm import FcmProvider, HttpxAuthRequest, build_body
from ucpush.sim.common import Fault
from ucpush.sim.fcm import FcmSimulator
from ucpush.store.repository import ProviderApp

from .conftest import (
    FCM_PROJECT,
    PAYLOAD,
    FcmWorld,
    fast_settings,
    make_push,
    write_service_account,
)

Factory = Callable[..., FcmProvider]


@pytest.fixture
def token_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """URLs google-auth fetched through our transport (token grants)."""
    calls: list[str] = []
    original = HttpxAuthRequest.__call__

    def counting(self: HttpxAuthRequest, url: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(url)
        return original(self, url, *args, **kwargs)

    monkeypatch.setattr(HttpxAuthRequest, "__call__", counting)
    return calls


async def test_message_delivered_byte_exact(fcm_world: FcmWorld, fcm_provider: FcmProvider):
    token = fcm_world.device()
    push = make_push(fcm_world.app, token, priority=Priority.NORMAL, collapse_id="chat-9")
    result = await fcm_provider.send(push)
    assert (result.outcome, result.status, result.attempts) == (Outcome.DELIVERED, 200, 1)
    [delivery] = fcm_world.sim.delivered
    assert delivery.raw == build_body(push, fcm_world.clock.now)
    assert (delivery.project_id, delivery.token) == (FCM_PROJECT, token)
    assert delivery.message["data"] == {
        "jwe": PAYLOAD,
        "type": "message",
        "tid": push.tracking_id,
    }
    assert delivery.message["android"] == {"priority": "normal", "collapse_key": "chat-9"}
    assert result.provider_id == delivery.name


async def test_voip_push_is_high_priority_and_short_lived(
    fcm_world: FcmWorld, fcm_provider: FcmProvider
):
    token = fcm_world.device()
    await fcm_provider.send(make_push(fcm_world.app, token, push_type=PushType.VOIP))
    expiration = int(fcm_world.clock.now) + 600
    missed_call = PushType.MISSED_CALL
    expiring = make_push(fcm_world.app, token, push_type=missed_call, expiration=expiration)
    await fcm_provider.send(expiring)
    voip, missed = fcm_world.sim.delivered
    assert voip.message["android"] == {"priority": "high", "ttl": "30s"}
    assert missed.message["android"] == {"priority": "high", "ttl": "600s"}


async def test_unregistered_token(fcm_world: FcmWorld, fcm_provider: FcmProvider):
    token = fcm_world.device()
    fcm_world.sim.unregister_device(token)
    result = await fcm_provider.send(make_push(fcm_world.app, token))
    assert (result.outcome, result.status, result.reason) == (
        Outcome.UNREGISTERED,
        404,
        "UNREGISTERED",
    )


async def test_invalid_token_is_bad_device_token(fcm_world: FcmWorld, fcm_provider: FcmProvider):
    result = await fcm_provider.send(make_push(fcm_world.app, "not-a-registered-token"))
    assert (result.outcome, result.status, result.attempts) == (Outcome.BAD_DEVICE_TOKEN, 400, 1)


async def test_token_of_another_project_is_rejected(fcm_world: FcmWorld, fcm_provider: FcmProvider):
    result = await fcm_provider.send(make_push(fcm_world.app, fcm_world.device("other-project")))
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "SENDER_ID_MISMATCH")


async def test_third_party_auth_error_is_rejected_without_renewal(
    fcm_world: FcmWorld, fcm_provider: FcmProvider, token_requests: list[str]
):
    fcm_world.sim.inject(Fault("status", status=401, fcm_error="THIRD_PARTY_AUTH_ERROR"))
    result = await fcm_provider.send(make_push(fcm_world.app, fcm_world.device()))
    assert (result.outcome, result.reason, result.attempts) == (
        Outcome.REJECTED,
        "THIRD_PARTY_AUTH_ERROR",
        1,
    )
    assert len(token_requests) == 1


async def test_rejected_access_token_is_refreshed_once_and_retried(
    fcm_world: FcmWorld, fcm_provider: FcmProvider, token_requests: list[str]
):
    """FCM stops accepting the access token before google-auth expected it to expire."""
    fcm_world.sim_clock.now = time.time() - 200  # grant accepted: iat within the skew
    token = fcm_world.device()
    assert (await fcm_provider.send(make_push(fcm_world.app, token))).attempts == 1
    # Past the access token's hour for FCM, still before the next grant's exp.
    fcm_world.sim_clock.advance(3700)
    result = await fcm_provider.send(make_push(fcm_world.app, token))
    assert (result.outcome, result.attempts) == (Outcome.DELIVERED, 2)
    assert len(fcm_world.sim.delivered) == 2
    assert token_requests == [fcm_world.sim.token_uri] * 2


async def test_quota_exceeded_backs_off_the_project(
    fcm_world: FcmWorld, fcm_provider: FcmProvider, tmp_path: Path
):
    token = fcm_world.device()
    fcm_world.sim.inject(Fault("status", status=429, fcm_error="QUOTA_EXCEEDED", retry_after=5))
    result = await fcm_provider.send(make_push(fcm_world.app, token))
    assert (result.outcome, result.reason, result.attempts) == (
        Outcome.THROTTLED,
        "QUOTA_EXCEEDED",
        1,
    )
    assert result.retry_after is not None and result.retry_after >= 60

    # Further pushes to the project are throttled without asking FCM: a queued fault stays.
    fcm_world.clock.advance(30)
    fcm_world.sim.inject(Fault("latency"))
    result = await fcm_provider.send(make_push(fcm_world.app, token))
    assert (result.outcome, result.attempts, result.retry_after) == (Outcome.THROTTLED, 0, 30)
    assert len(fcm_world.sim.faults) == 1
    assert fcm_world.sim.delivered == []
    fcm_world.sim.faults.clear()

    # Other projects are not affected.
    other_file = tmp_path / "other.json"
    write_service_account(fcm_world.sim, other_file, "other-project")
    other = ProviderApp("tenant-2", "FCM", "other-project", str(other_file))
    result = await fcm_provider.send(make_push(other, fcm_world.device("other-project")))
    assert result.outcome is Outcome.DELIVERED

    # A second episode right after the first waits twice as long.
    fcm_world.clock.advance(31)
    fcm_world.sim.inject(Fault("status", status=429, fcm_error="QUOTA_EXCEEDED"))
    result = await fcm_provider.send(make_push(fcm_world.app, token))
    assert (result.outcome, result.retry_after) == (Outcome.THROTTLED, 120)

    # Once it has passed, pushes flow again and the next episode starts at 60 s.
    fcm_world.clock.advance(120)
    result = await fcm_provider.send(make_push(fcm_world.app, token))
    assert result.outcome is Outcome.DELIVERED
    fcm_world.sim.inject(Fault("status", status=429, fcm_error="QUOTA_EXCEEDED"))
    result = await fcm_provider.send(make_push(fcm_world.app, token))
    assert (result.outcome, result.retry_after) == (Outcome.THROTTLED, 60)


async def test_unavailable_honours_short_retry_after(
    fcm_world: FcmWorld, fcm_provider: FcmProvider
):
    fcm_world.sim.inject(Fault("status", status=503, fcm_error="UNAVAILABLE", retry_after=1))
    started = time.monotonic()
    result = await fcm_provider.send(make_push(fcm_world.app, fcm_world.device()))
    assert (result.outcome, result.attempts) == (Outcome.DELIVERED, 2)
    assert time.monotonic() - started >= 1.0
    assert len(fcm_world.sim.delivered) == 1


async def test_unavailable_with_long_retry_after_is_handed_back(
    fcm_world: FcmWorld, fcm_provider: FcmProvider
):
    fcm_world.sim.inject(Fault("status", status=503, fcm_error="UNAVAILABLE", retry_after=30))
    result = await fcm_provider.send(make_push(fcm_world.app, fcm_world.device()))
    assert (result.outcome, result.reason, result.retry_after, result.attempts) == (
        Outcome.PROVIDER_DOWN,
        "UNAVAILABLE",
        30.0,
        1,
    )
    assert fcm_world.sim.delivered == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", status=500, fcm_error="INTERNAL"),
        Fault("status", status=503, fcm_error="UNAVAILABLE", count=2),
        Fault("reset"),
    ],
    ids=["internal", "unavailable-x2", "reset"],
)
async def test_transient_failures_are_retried_and_delivered_once(
    fcm_world: FcmWorld, fcm_provider: FcmProvider, fault: Fault
):
    fcm_world.sim.inject(fault)
    result = await fcm_provider.send(
        make_push(fcm_world.app, fcm_world.device(), push_type=PushType.VOIP)
    )
    assert (result.outcome, result.attempts) == (Outcome.DELIVERED, fault.count + 1)
    assert len(fcm_world.sim.delivered) == 1


async def test_goaway_is_retried_and_delivered_once(fcm_world: FcmWorld, fcm_provider: FcmProvider):
    token = fcm_world.device()
    await fcm_provider.send(make_push(fcm_world.app, token))
    fcm_world.sim.inject(Fault("goaway"))
    result = await fcm_provider.send(make_push(fcm_world.app, token, push_type=PushType.VOIP))
    assert result.outcome is Outcome.DELIVERED
    assert [d.message["data"]["type"] for d in fcm_world.sim.delivered] == ["message", "voip"]


async def test_persistent_outage_is_provider_down(fcm_world: FcmWorld, fcm_provider: FcmProvider):
    fcm_world.sim.inject(Fault("status", status=503, fcm_error="UNAVAILABLE", count=5))
    result = await fcm_provider.send(make_push(fcm_world.app, fcm_world.device()))
    assert (result.outcome, result.status, result.attempts) == (Outcome.PROVIDER_DOWN, 503, 3)


async def test_unusable_credentials_are_rejected(
    fcm_world: FcmWorld, fcm_provider: FcmProvider, tmp_path: Path
):
    missing = ProviderApp("t", "FCM", FCM_PROJECT, str(tmp_path / "missing.json"))
    result = await fcm_provider.send(make_push(missing, fcm_world.device()))
    assert (result.outcome, result.reason, result.attempts) == (
        Outcome.REJECTED,
        "CredentialsUnusable",
        0,
    )
    # A well-formed service account the token endpoint does not know.
    stranger_file = tmp_path / "stranger.json"
    write_service_account(FcmSimulator(), stranger_file)
    info = json.loads(stranger_file.read_text())
    info["token_uri"] = fcm_world.sim.token_uri
    stranger_file.write_text(json.dumps(info))
    stranger = ProviderApp("t", "FCM", FCM_PROJECT, str(stranger_file))
    result = await fcm_provider.send(make_push(stranger, fcm_world.device()))
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "TokenRefreshFailed")
    assert fcm_world.sim.delivered == []


async def test_payload_too_large_is_raised_before_sending(
    fcm_world: FcmWorld, fcm_provider: FcmProvider
):
    with pytest.raises(PayloadTooLarge):
        await fcm_provider.send(make_push(fcm_world.app, fcm_world.device(), payload="x" * 4000))
    assert fcm_world.sim.delivered == []


async def test_five_hundred_concurrent_pushes_share_one_access_token(
    fcm_world: FcmWorld, fcm_provider: FcmProvider, token_requests: list[str]
):
    tokens = [fcm_world.device() for _ in range(50)]
    pushes = [make_push(fcm_world.app, tokens[i % 50], tracking_id=f"p{i}") for i in range(500)]
    results = await asyncio.gather(*(fcm_provider.send(p) for p in pushes))
    assert all(r.outcome is Outcome.DELIVERED for r in results)
    assert len(fcm_world.sim.delivered) == 500
    assert sorted(d.message["data"]["tid"] for d in fcm_world.sim.delivered) == sorted(
        p.tracking_id for p in pushes
    )
    assert len(token_requests) == 1


async def test_logs_never_contain_payload_or_full_token(
    fcm_world: FcmWorld, fcm_provider: FcmProvider
):
    token = fcm_world.device()
    with capture_logs() as logs:
        await fcm_provider.send(make_push(fcm_world.app, token, tracking_id="trk-2"))
    [entry] = [e for e in logs if e["event"] == "push_result"]
    assert (entry["tracking_id"], entry["outcome"], entry["token"]) == (
        "trk-2",
        "delivered",
        token[:8],
    )
    assert token not in repr(logs)
    assert PAYLOAD not in repr(logs)


async def test_tls_with_provider_ca_file(tmp_path: Path):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
    server_ssl.set_alpn_protocols(["h2"])
    async with FcmSimulator(ssl_context=server_ssl) as sim:
        assert sim.token_uri.startswith("https://")
        sa_file = tmp_path / "sa.json"
        write_service_account(sim, sa_file)
        sim.register_device("fcm-tls-device", FCM_PROJECT)
        app = ProviderApp("t", "FCM", FCM_PROJECT, str(sa_file))
        provider = FcmProvider(fast_settings(fcm_url=sim.url, provider_ca_file=str(ca_file)))
        try:
            result = await provider.send(make_push(app, "fcm-tls-device"))
        finally:
            await provider.aclose()
        assert result.outcome is Outcome.DELIVERED
        # Without the CA, the token endpoint is not trusted either.
        provider = FcmProvider(fast_settings(fcm_url=sim.url))
        try:
            result = await provider.send(make_push(app, "fcm-tls-device"))
        finally:
            await provider.aclose()
        assert result.outcome is Outcome.PROVIDER_DOWN
        assert len(sim.delivered) == 1

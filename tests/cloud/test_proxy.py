"""The cloud connection reaches the relay through a real squid (tests/relay/test_proxy.py's)
with the proxy settings the administrator stored."""

from __future__ import annotations

from tests.relay.conftest import Stack
from tests.relay.test_proxy import USERS, Squid, pytestmark, squid
from ucpush.cloud import CloudConnection, OnboardingStatus, ProxyAuth, ProxyConfig

__all__ = ["pytestmark", "squid"]


async def test_onboarding_and_pushing_through_the_proxy(
    stack: Stack, squid: Squid, cloud: CloudConnection
):
    username, password = USERS["digest"]
    await cloud.set_certificates(system_ca=False, ca_bundle=stack.ca_file.read_text())
    await cloud.set_proxy(ProxyConfig(squid.host, squid.port, username, password, ProxyAuth.DIGEST))
    before = len(squid.connects())
    check = await cloud.check_reachability(stack.relay.url)
    assert check.reachable and check.certificate_trusted, check
    await cloud.enroll(await stack.voucher(), stack.relay.url)
    client = cloud.current_client()
    assert client is not None and (await client.status())["status"] == "completed"
    port = stack.relay.url.rsplit(":", 1)[1]
    tunnels = [
        user
        for code, target, user in squid.connects()[before:]
        if target == f"127.0.0.1:{port}" and code == "TCP_TUNNEL/200"
    ]
    # Reachability check and enrollment at least; each answered the digest challenge.
    assert len(tunnels) >= 2 and set(tunnels) == {username}


async def test_wrong_proxy_password_raises_the_pool_alarm(
    stack: Stack, squid: Squid, cloud: CloudConnection
):
    await cloud.set_certificates(system_ca=False, ca_bundle=stack.ca_file.read_text())
    await cloud.enroll(await stack.voucher(), stack.relay.url)  # directly, for now
    username, _ = USERS["digest"]
    await cloud.set_proxy(ProxyConfig(squid.host, squid.port, username, "wrong", ProxyAuth.DIGEST))
    status = await cloud.verify()
    assert status.status is OnboardingStatus.ERROR
    assert status.alarm == "HttpClientPoolCreationError"
    check = await cloud.check_reachability()
    assert not check.reachable and check.detail.startswith("proxy:")
    await cloud.set_proxy(None)
    assert (await cloud.verify()).label == "Onboarding Completed"

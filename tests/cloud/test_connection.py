"""CloudConnection against a real relay over TLS: enroll, trust, push switch, offboard,
re-onboard, manual refresh-token recovery, and errors with their alarm names."""

from __future__ import annotations

import dataclasses
import socket

import pytest
from sqlalchemy import text

from tests.relay.conftest import Stack
from ucpush.cloud import CloudConnection, CloudError, OnboardingStatus, ProxyAuth, ProxyConfig
from ucpush.cloud.sealing import Sealer, SealError
from ucpush.config import Settings
from ucpush.relay.client import RelayAuthError, RelayClient
from ucpush.store import Store

BOTH_BACKENDS = pytest.mark.parametrize(
    "node_store_url",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


async def trusted(cloud: CloudConnection, stack: Stack) -> None:
    await cloud.set_certificates(system_ca=False, ca_bundle=stack.ca_file.read_text())


async def onboarded(cloud: CloudConnection, stack: Stack) -> None:
    await trusted(cloud, stack)
    await cloud.enroll(await stack.voucher(), stack.relay.url)


async def test_cluster_id_is_made_once_and_shared(
    cloud: CloudConnection, node_settings: Settings, node_store: Store
):
    assert len(cloud.cluster_id) == 36
    assert cloud.status.label == "Onboarding Pending"
    async with await CloudConnection.open(node_settings, node_store) as other_node:
        assert other_node.cluster_id == cloud.cluster_id
    assert cloud.current_client() is None


@pytest.mark.parametrize(
    "node_store_url",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_enroll_completes_and_pushes_are_possible(stack: Stack, cloud: CloudConnection):
    await onboarded(cloud, stack)
    assert cloud.status.label == "Onboarding Completed"
    assert cloud.relay_url == stack.relay.url and cloud.push_enabled
    client = cloud.current_client()
    assert client is not None and cloud.current_client() is client
    assert (await client.status())["cluster_id"] == cloud.cluster_id
    [account] = await stack.store.relay.list_machine_accounts(stack.tenant_id)
    assert account.id == cloud.account_id


async def test_refresh_token_is_sealed_at_rest(
    stack: Stack, cloud: CloudConnection, node_store: Store
):
    await onboarded(cloud, stack)
    token = cloud.current_client().refresh_token  # type: ignore[union-attr]
    async with node_store.engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM cloud_state"))).one()
    assert token not in str(tuple(row))
    assert row.refresh_token_sealed.startswith("v1:")


async def test_enroll_refuses_bad_vouchers_and_input(stack: Stack, cloud: CloudConnection):
    await trusted(cloud, stack)
    with pytest.raises(CloudError, match="voucher") as bad:
        await cloud.enroll("AAAA-BBBB-CCCC-DDDD-EEEE-FFFF", stack.relay.url)
    assert bad.value.status == 400
    for url in ("ftp://relay", "not a url", "https://user:pw@relay", "https://relay:99999"):
        with pytest.raises(CloudError, match="relay URL") as refused:
            await cloud.enroll(await stack.voucher(), url)
        assert refused.value.status == 400
    with pytest.raises(CloudError, match="voucher"):
        await cloud.enroll("  ", stack.relay.url)
    assert cloud.status.status is OnboardingStatus.PENDING
    assert cloud.current_client() is None


async def test_untrusted_certificate_then_ca_bundle(stack: Stack, cloud: CloudConnection):
    # The relay's certificate comes from a private CA the system store does not hold.
    check = await cloud.check_reachability(stack.relay.url)
    assert check.tls and not check.reachable and check.certificate_trusted is False
    assert "certificate not trusted" in check.detail and "trustme" in check.issuer
    with pytest.raises(CloudError, match="unreachable") as failed:
        await cloud.enroll(await stack.voucher(), stack.relay.url)
    assert failed.value.status == 502
    await trusted(cloud, stack)
    check = await cloud.check_reachability(stack.relay.url)
    assert check.reachable and check.certificate_trusted and check.not_after is not None


async def test_reachability_of_a_closed_port(cloud: CloudConnection):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check = await cloud.check_reachability(f"https://127.0.0.1:{port}")
    assert not check.reachable and "cannot connect" in check.detail
    with pytest.raises(CloudError, match="relay URL"):
        await cloud.check_reachability()  # none entered yet


async def test_ca_settings_are_checked(cloud: CloudConnection):
    with pytest.raises(CloudError, match="PEM"):
        await cloud.set_certificates(system_ca=False, ca_bundle="-----BEGIN CERTIFICATE-----\nxx")
    with pytest.raises(CloudError, match="private key"):
        await cloud.set_certificates(system_ca=True, ca_bundle="-----BEGIN " + "PRIVATE KEY-----")
    with pytest.raises(CloudError, match="CA bundle"):
        await cloud.set_certificates(system_ca=False, ca_bundle="")
    assert cloud.system_ca and cloud.ca_bundle == ""


async def test_disable_and_enable_push(stack: Stack, cloud: CloudConnection):
    with pytest.raises(CloudError, match="not onboarded"):
        await cloud.enable_push()
    await onboarded(cloud, stack)
    await cloud.disable_push()
    assert cloud.current_client() is None
    assert cloud.status.status is OnboardingStatus.COMPLETED
    await cloud.enable_push()
    assert cloud.current_client() is not None


async def test_offboard_then_onboard_again(stack: Stack, cloud: CloudConnection):
    await onboarded(cloud, stack)
    old_token = cloud.current_client().refresh_token  # type: ignore[union-attr]
    with pytest.raises(CloudError, match="already onboarded"):
        await cloud.enroll(await stack.voucher(), stack.relay.url)
    await cloud.offboard()
    assert cloud.status.status is OnboardingStatus.PENDING and not cloud.account_id
    assert cloud.current_client() is None
    async with RelayClient(stack.relay.url, old_token, verify=stack.client_ssl()) as stale:
        with pytest.raises(RelayAuthError):
            await stale.access_token()
    await cloud.enroll(await stack.voucher(), stack.relay.url)
    assert cloud.status.status is OnboardingStatus.COMPLETED
    assert (await cloud.verify()).status is OnboardingStatus.COMPLETED


async def test_revoked_token_then_manual_replacement(stack: Stack, cloud: CloudConnection):
    await onboarded(cloud, stack)
    assert (await cloud.check_token()).status is OnboardingStatus.COMPLETED
    new_token = await stack.relay.service.onboarding.replace_refresh_token(cloud.account_id)
    cloud.current_client()._access = None  # type: ignore[union-attr]  # as if it expired
    status = await cloud.check_token()
    assert status.status is OnboardingStatus.ERROR and status.alarm == "AccessTokenInvalid"
    assert status.label == "Onboarding Error: AccessTokenInvalid"
    with pytest.raises(CloudError, match="refused") as refused:
        await cloud.replace_refresh_token("not-the-token")
    assert refused.value.status == 400
    with pytest.raises(CloudError, match="one word"):
        await cloud.replace_refresh_token("two words")
    assert (await cloud.replace_refresh_token(new_token)).label == "Onboarding Completed"
    client = cloud.current_client()
    assert client is not None and client.refresh_token == new_token
    assert (await client.status())["status"] == "completed"


async def test_relay_down_raises_token_unavailable(
    stack: Stack, cloud: CloudConnection, node_store: Store
):
    await onboarded(cloud, stack)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{probe.getsockname()[1]}"
    record = await node_store.cloud.get()
    await node_store.cloud.save(dataclasses.replace(record, relay_url=dead))  # type: ignore[type-var]
    status = await cloud.verify()
    assert status.alarm == "PushNotificationServiceAccessTokenUnavailable"
    # Still offered: the next push may find the relay back, and fails fast if not.
    assert cloud.current_client() is not None
    await node_store.cloud.save(dataclasses.replace(record, relay_url=stack.relay.url))  # type: ignore[type-var]
    # The periodic check asks the relay again and clears the error once it answers.
    assert (await cloud.check_token()).label == "Onboarding Completed"


@pytest.mark.parametrize(
    "node_store_url",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_other_nodes_follow_changes(
    stack: Stack, cloud: CloudConnection, node_settings: Settings, node_store: Store
):
    async with await CloudConnection.open(node_settings, node_store) as other_node:
        await onboarded(cloud, stack)
        assert other_node.current_client() is None
        await other_node.reload()
        assert other_node.status.status is OnboardingStatus.COMPLETED
        first = other_node.current_client()
        assert first is not None
        await cloud.disable_push()
        await other_node.reload()
        assert other_node.current_client() is None


async def test_proxy_troubleshooting_and_service_parameters(
    cloud: CloudConnection, node_store: Store
):
    await cloud.set_proxy(ProxyConfig("proxy.example", 3128, "ops", "s3cret", ProxyAuth.BASIC))
    assert cloud.proxy == ProxyConfig("proxy.example", 3128, "ops", "s3cret", ProxyAuth.BASIC)
    async with node_store.engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM cloud_state"))).one()
    assert "s3cret" not in str(tuple(row))
    await cloud.set_proxy(None)
    assert cloud.proxy is None
    for bad in (("", 3128), ("a b", 3128), ("proxy", 0), ("proxy", 70000)):
        with pytest.raises(ValueError):
            ProxyConfig(*bad)
    with pytest.raises(ValueError, match="user name"):
        ProxyConfig("proxy", 3128, password="x")

    assert cloud.pii_support_token == ""
    await cloud.set_troubleshooting(send=True, encrypt_pii=True)
    token = cloud.pii_support_token
    assert len(token) >= 40 and cloud.send_troubleshooting
    await cloud.set_troubleshooting(send=True, encrypt_pii=True)
    assert cloud.pii_support_token == token  # kept while encryption stays on
    await cloud.set_troubleshooting(send=False, encrypt_pii=False)
    assert cloud.pii_support_token == "" and not cloud.send_troubleshooting

    assert cloud.push_high_availability
    await cloud.set_push_high_availability(False)
    assert not cloud.push_high_availability


def test_sealer_refuses_another_key_and_damage():
    sealed = Sealer(b"k" * 32).seal("secret", "refresh_token")
    assert Sealer(b"k" * 32).open(sealed, "refresh_token") == "secret"
    with pytest.raises(SealError, match="secret_file"):
        Sealer(b"j" * 32).open(sealed, "refresh_token")
    with pytest.raises(SealError):
        Sealer(b"k" * 32).open(sealed, "proxy_password")  # bound to its field
    with pytest.raises(SealError):
        Sealer(b"k" * 32).open("v1:@@@", "refresh_token")
    with pytest.raises(SealError, match="version"):
        Sealer(b"k" * 32).open("v9:abc", "refresh_token")
    assert Sealer(b"k" * 32).seal("", "x") == ""

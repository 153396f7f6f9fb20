"""Every ``RelayRepository`` method, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import StatementError

from ucpush.store import Store
from ucpush.store.repository import (
    Conflict,
    MachineAccount,
    NotFound,
    ProviderApp,
    RefreshToken,
    RelayRepository,
    SigningKey,
    Tenant,
    TenantStatus,
    Voucher,
    VoucherUnusable,
)
from ucpush.store.sql import SqlRelayRepository

T0 = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)


def tenant(n: int = 1, name: str | None = None) -> Tenant:
    return Tenant(
        id=f"t{n}",
        name=name or f"tenant-{n}",
        status=TenantStatus.PENDING,
        created_at=T0 + timedelta(seconds=n),
    )


def account(n: int = 1, tenant_id: str = "t1") -> MachineAccount:
    return MachineAccount(
        id=f"a{n}",
        tenant_id=tenant_id,
        cluster_id=f"cluster-{n}",
        cluster_name=f"Cluster {n}",
        created_at=T0 + timedelta(seconds=n),
    )


def app(tenant_id: str = "t1", service: str = "APNS", topic: str = "com.example") -> ProviderApp:
    return ProviderApp(
        tenant_id=tenant_id,
        service=service,
        topic=topic,
        credentials_file="keys/apns.p8",
        environment="production",
        team_id="TEAM123456",
        key_id="KEY1234567",
    )


@pytest.fixture
def relay(store: Store) -> SqlRelayRepository:
    return store.relay


@pytest.fixture
async def with_tenant(relay: SqlRelayRepository) -> Tenant:
    t = tenant()
    await relay.create_tenant(t)
    return t


@pytest.fixture
async def with_account(relay: SqlRelayRepository, with_tenant: Tenant) -> MachineAccount:
    a = account()
    await relay.add_machine_account(a)
    return a


def test_implements_protocol() -> None:
    names = [n for n in vars(RelayRepository) if not n.startswith("_")]
    assert names
    for name in names:
        expected = inspect.signature(getattr(RelayRepository, name))
        assert inspect.signature(getattr(SqlRelayRepository, name)) == expected, name


# tenants


async def test_tenant_round_trip(relay: SqlRelayRepository) -> None:
    t = tenant()
    await relay.create_tenant(t)
    assert await relay.get_tenant("t1") == t
    assert await relay.get_tenant_by_name("tenant-1") == t


async def test_list_tenants_by_name(relay: SqlRelayRepository) -> None:
    assert await relay.list_tenants() == []
    b, a = tenant(1, "bravo"), tenant(2, "alpha")
    await relay.create_tenant(b)
    await relay.create_tenant(a)
    assert await relay.list_tenants() == [a, b]


async def test_tenant_duplicates_conflict(relay: SqlRelayRepository, with_tenant: Tenant) -> None:
    with pytest.raises(Conflict):
        await relay.create_tenant(tenant(2, name=with_tenant.name))
    with pytest.raises(Conflict):
        await relay.create_tenant(tenant(1, name="other"))
    assert await relay.list_tenants() == [with_tenant]


async def test_tenant_not_found(relay: SqlRelayRepository) -> None:
    with pytest.raises(NotFound):
        await relay.get_tenant("t1")
    with pytest.raises(NotFound):
        await relay.get_tenant_by_name("tenant-1")
    with pytest.raises(NotFound):
        await relay.set_tenant_status("t1", TenantStatus.DISABLED)


async def test_set_tenant_status(relay: SqlRelayRepository, with_tenant: Tenant) -> None:
    await relay.set_tenant_status("t1", TenantStatus.COMPLETED)
    got = await relay.get_tenant("t1")
    assert got.status is TenantStatus.COMPLETED
    assert got.created_at == with_tenant.created_at


# vouchers


def voucher(code_hash: str = "h1", ttl: timedelta = timedelta(days=7)) -> Voucher:
    return Voucher(code_hash=code_hash, tenant_id="t1", created_at=T0, expires_at=T0 + ttl)


async def test_use_voucher(relay: SqlRelayRepository, with_tenant: Tenant) -> None:
    await relay.add_voucher(voucher())
    now = T0 + timedelta(hours=1)
    assert await relay.use_voucher("h1", now) == Voucher(
        code_hash="h1",
        tenant_id="t1",
        created_at=T0,
        expires_at=T0 + timedelta(days=7),
        used_at=now,
    )
    with pytest.raises(VoucherUnusable) as err:
        await relay.use_voucher("h1", now + timedelta(seconds=1))
    assert err.value.reason == "used"


async def test_use_voucher_unknown(relay: SqlRelayRepository) -> None:
    with pytest.raises(VoucherUnusable) as err:
        await relay.use_voucher("nope", T0)
    assert err.value.reason == "unknown"


async def test_use_voucher_expired(relay: SqlRelayRepository, with_tenant: Tenant) -> None:
    await relay.add_voucher(voucher(ttl=timedelta(hours=1)))
    # Valid strictly before expires_at only.
    for now in (T0 + timedelta(hours=1), T0 + timedelta(days=1)):
        with pytest.raises(VoucherUnusable) as err:
            await relay.use_voucher("h1", now)
        assert err.value.reason == "expired"
    used = await relay.use_voucher("h1", T0 + timedelta(hours=1) - timedelta(microseconds=1))
    assert used.used_at is not None


async def test_use_voucher_concurrently(relay: SqlRelayRepository, with_tenant: Tenant) -> None:
    await relay.add_voucher(voucher())
    results = await asyncio.gather(
        *(relay.use_voucher("h1", T0 + timedelta(seconds=i)) for i in range(8)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Voucher)]
    losers = [r for r in results if isinstance(r, VoucherUnusable)]
    assert len(winners) == 1
    assert len(losers) == 7
    assert {e.reason for e in losers} == {"used"}


async def test_voucher_errors(relay: SqlRelayRepository, with_tenant: Tenant) -> None:
    await relay.add_voucher(voucher())
    with pytest.raises(Conflict):
        await relay.add_voucher(voucher())
    with pytest.raises(NotFound):
        await relay.add_voucher(Voucher("h2", "no-such-tenant", T0, T0 + timedelta(days=1)))


# machine accounts


async def test_machine_accounts(relay: SqlRelayRepository, with_tenant: Tenant) -> None:
    await relay.create_tenant(tenant(2))
    a1, a2, a3 = account(1), account(2, tenant_id="t2"), account(3)
    for a in (a3, a1, a2):
        await relay.add_machine_account(a)
    assert await relay.get_machine_account("a2") == a2
    assert await relay.list_machine_accounts() == [a1, a2, a3]
    assert await relay.list_machine_accounts("t1") == [a1, a3]
    assert await relay.list_machine_accounts("t9") == []


async def test_machine_account_errors(
    relay: SqlRelayRepository, with_account: MachineAccount
) -> None:
    with pytest.raises(Conflict):
        await relay.add_machine_account(with_account)
    with pytest.raises(NotFound):
        await relay.add_machine_account(account(2, tenant_id="no-such-tenant"))
    with pytest.raises(NotFound):
        await relay.get_machine_account("a9")
    with pytest.raises(NotFound):
        await relay.disable_machine_account("a9", T0)


async def test_disable_machine_account(
    relay: SqlRelayRepository, with_account: MachineAccount
) -> None:
    assert with_account.disabled_at is None
    first = T0 + timedelta(days=1)
    await relay.disable_machine_account("a1", first)
    await relay.disable_machine_account("a1", first + timedelta(days=1))
    assert (await relay.get_machine_account("a1")).disabled_at == first


# refresh tokens


async def test_refresh_tokens(relay: SqlRelayRepository, with_account: MachineAccount) -> None:
    await relay.add_machine_account(account(2))
    tokens = [RefreshToken(f"r{i}", "a1", T0) for i in range(3)]
    for t in [*tokens, RefreshToken("other", "a2", T0)]:
        await relay.add_refresh_token(t)
    assert await relay.get_refresh_token("r0") == tokens[0]

    early, late = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    assert await relay.revoke_refresh_tokens("a1", early) == 3
    await relay.add_refresh_token(RefreshToken("r3", "a1", early))
    assert await relay.revoke_refresh_tokens("a1", late) == 1
    assert await relay.revoke_refresh_tokens("a1", late) == 0
    assert await relay.revoke_refresh_tokens("a9", late) == 0

    assert (await relay.get_refresh_token("r0")).revoked_at == early
    assert (await relay.get_refresh_token("r3")).revoked_at == late
    assert (await relay.get_refresh_token("other")).revoked_at is None


async def test_refresh_token_errors(
    relay: SqlRelayRepository, with_account: MachineAccount
) -> None:
    await relay.add_refresh_token(RefreshToken("r1", "a1", T0))
    with pytest.raises(Conflict):
        await relay.add_refresh_token(RefreshToken("r1", "a1", T0))
    with pytest.raises(NotFound):
        await relay.add_refresh_token(RefreshToken("r2", "no-such-account", T0))
    with pytest.raises(NotFound):
        await relay.get_refresh_token("r2")


# signing keys


async def test_signing_keys(relay: SqlRelayRepository) -> None:
    pem = b"opaque key bytes\nMIGHAgEAMBMGByqGSM49\x00\xff\n"  # stored verbatim, any bytes
    new = SigningKey("k2", pem, T0 + timedelta(days=30))
    old = SigningKey("k1", pem, T0)
    await relay.add_signing_key(new)
    await relay.add_signing_key(old)
    assert await relay.list_signing_keys() == [old, new]

    retired = T0 + timedelta(days=31)
    await relay.retire_signing_key("k1", retired)
    await relay.retire_signing_key("k1", retired + timedelta(days=1))
    assert await relay.list_signing_keys() == [
        SigningKey("k1", pem, T0, retired_at=retired),
        new,
    ]


async def test_signing_key_errors(relay: SqlRelayRepository) -> None:
    await relay.add_signing_key(SigningKey("k1", b"pem", T0))
    with pytest.raises(Conflict):
        await relay.add_signing_key(SigningKey("k1", b"other", T0))
    with pytest.raises(NotFound):
        await relay.retire_signing_key("k9", T0)


# provider apps


async def test_apps(relay: SqlRelayRepository, with_tenant: Tenant) -> None:
    await relay.create_tenant(tenant(2))
    fcm, apns, dev, other = app(service="FCM"), app(), app(service="APNS:dev"), app("t2")
    for a in (fcm, other, apns, dev):
        await relay.put_app(a)
    assert await relay.get_app("t1", "APNS:dev") == dev
    assert await relay.list_apps() == [apns, dev, fcm, other]
    assert await relay.list_apps("t2") == [other]
    assert await relay.list_apps("t9") == []

    await relay.delete_app("t1", "APNS")
    assert await relay.list_apps("t1") == [dev, fcm]
    with pytest.raises(NotFound):
        await relay.get_app("t1", "APNS")
    with pytest.raises(NotFound):
        await relay.delete_app("t1", "APNS")


async def test_put_app_replaces(relay: SqlRelayRepository, with_tenant: Tenant) -> None:
    await relay.put_app(app())
    replacement = ProviderApp(
        tenant_id="t1",
        service="APNS",
        topic="com.example.new",
        credentials_file="keys/new.p8",
        environment="sandbox",
    )
    await relay.put_app(replacement)
    assert await relay.list_apps() == [replacement]


async def test_put_app_unknown_tenant(relay: SqlRelayRepository) -> None:
    with pytest.raises(NotFound):
        await relay.put_app(app("no-such-tenant"))


# timestamps


async def test_timestamps_come_back_in_utc(relay: SqlRelayRepository) -> None:
    paris = timezone(timedelta(hours=1))
    local = datetime(2026, 11, 24, 13, 0, 0, 654321, tzinfo=paris)
    await relay.create_tenant(Tenant("t1", "acme", TenantStatus.PENDING, local))
    created = (await relay.get_tenant("t1")).created_at
    assert created == local
    assert created.tzinfo is UTC
    assert created.hour == 12
    assert created.microsecond == 654321


async def test_expiry_compares_instants(relay: SqlRelayRepository, with_tenant: Tenant) -> None:
    # 13:30+02:00 is 11:30Z: before 12:00Z although its wall-clock time is later.
    ahead = timezone(timedelta(hours=2))
    await relay.add_voucher(voucher(ttl=timedelta(0)))
    with pytest.raises(VoucherUnusable) as err:
        await relay.use_voucher("h1", datetime(2026, 11, 24, 14, 30, tzinfo=ahead))
    assert err.value.reason == "expired"
    used = await relay.use_voucher("h1", datetime(2026, 11, 24, 13, 30, tzinfo=ahead))
    assert used.used_at == T0 - timedelta(minutes=30, microseconds=123456)
    assert used.used_at is not None and used.used_at.tzinfo is UTC


async def test_naive_datetime_refused(relay: SqlRelayRepository) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        await relay.create_tenant(Tenant("t1", "acme", TenantStatus.PENDING, datetime(2026, 1, 1)))

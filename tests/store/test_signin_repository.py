"""Every ``SigninRepository`` method, on SQLite and PostgreSQL."""

from __future__ import annotations

import inspect
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ucpush.store import Store
from ucpush.store.repository import (
    ClientRefreshToken,
    Conflict,
    Device,
    EndUser,
    EnterpriseParams,
    NotFound,
    Platform,
    PushState,
    ServiceProfile,
    SigninRepository,
    UcService,
)
from ucpush.store.sql_signin import SqlSigninRepository

T0 = datetime(2026, 11, 25, 9, 0, 0, 250000, tzinfo=UTC)
KEY = bytes(range(32))


def user(name: str = "alice", **changes: Any) -> EndUser:
    return replace(
        EndUser(
            id=f"u-{name}",
            username=name,
            password_hash="scrypt$16384$8$1$c2FsdA$aGFzaA",
            created_at=T0,
            display_name=name.title(),
        ),
        **changes,
    )


def device(n: int = 1, user_id: str = "u-alice", **changes: Any) -> Device:
    return replace(
        Device(
            id=f"dev-{n}",
            user_id=user_id,
            platform=Platform.IOS,
            service="APNS",
            push_token="ab" * 32,
            push_key=KEY,
            push_key_id="k1",
            created_at=T0 + timedelta(seconds=n),
            updated_at=T0 + timedelta(seconds=n),
            sip_instance_id=f"<urn:uuid:00000000-0000-0000-0000-00000000000{n}>",
            pn_prid="ab" * 32,
        ),
        **changes,
    )


def token(n: int = 1, user_id: str = "u-alice", device_id: str = "dev-1") -> ClientRefreshToken:
    return ClientRefreshToken(
        token_hash=f"{n:064x}",
        user_id=user_id,
        device_id=device_id,
        created_at=T0,
        expires_at=T0 + timedelta(days=60),
    )


@pytest.fixture
def signin(store: Store) -> SqlSigninRepository:
    return store.signin


def test_implements_protocol() -> None:
    for name, member in inspect.getmembers(SigninRepository, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = getattr(SqlSigninRepository, name)
        assert inspect.signature(ours) == inspect.signature(member), name


def test_enterprise_params_are_validated() -> None:
    assert EnterpriseParams() == EnterpriseParams(False, 60, 60)
    EnterpriseParams(access_token_minutes=1, refresh_token_days=1)
    EnterpriseParams(access_token_minutes=1440, refresh_token_days=365)
    with pytest.raises(ValueError, match="1-1440 minutes"):
        EnterpriseParams(access_token_minutes=0)
    with pytest.raises(ValueError, match="1-1440 minutes"):
        EnterpriseParams(access_token_minutes=1441)
    with pytest.raises(ValueError, match="1-365 days"):
        EnterpriseParams(refresh_token_days=366)


async def test_enterprise_defaults_then_set(signin: SqlSigninRepository) -> None:
    assert await signin.get_enterprise() == EnterpriseParams()
    on = EnterpriseParams(oauth_refresh_login=True, access_token_minutes=5, refresh_token_days=7)
    assert await signin.set_enterprise(on, T0) == 0
    assert await signin.get_enterprise() == on


async def test_turning_refresh_login_off_revokes_every_refresh_token(
    signin: SqlSigninRepository,
) -> None:
    await signin.add_user(user())
    await signin.add_user(user("bob"))
    await signin.set_enterprise(EnterpriseParams(oauth_refresh_login=True), T0)
    await signin.add_refresh_token(token(1))
    await signin.add_refresh_token(token(2, user_id="u-bob", device_id="dev-9"))
    await signin.add_refresh_token(token(3))
    assert await signin.revoke_refresh_token(token(3).token_hash, T0)
    later = T0 + timedelta(hours=1)
    assert await signin.set_enterprise(EnterpriseParams(oauth_refresh_login=False), later) == 2
    for n in (1, 2):
        assert (await signin.get_refresh_token(token(n).token_hash)).revoked_at == later
    assert (await signin.get_refresh_token(token(3).token_hash)).revoked_at == T0


async def test_ucservices_and_profiles(signin: SqlSigninRepository) -> None:
    phone = UcService("s1", "phone", {"LocalPushSSIDList": "Ward4;Ward5"})
    misc = UcService("s2", "misc", {"Client.Foo": "bar"})
    await signin.add_ucservice(phone)
    await signin.add_ucservice(misc)
    with pytest.raises(Conflict):
        await signin.add_ucservice(replace(phone, id="s3"))
    assert await signin.get_ucservice_by_name("phone") == phone
    assert [s.name for s in await signin.list_ucservices()] == ["misc", "phone"]
    await signin.set_ucservice_params("s1", {"LocalPushSSIDList": "Ward6"})
    assert (await signin.get_ucservice_by_name("phone")).params == {"LocalPushSSIDList": "Ward6"}
    with pytest.raises(NotFound):
        await signin.set_ucservice_params("nope", {})
    with pytest.raises(NotFound):
        await signin.get_ucservice_by_name("nope")

    profile = ServiceProfile("p1", "nurses", ("s2", "s1"))
    await signin.add_profile(profile)
    await signin.add_profile(ServiceProfile("p2", "empty"))
    assert await signin.get_profile_by_name("nurses") == profile
    assert await signin.list_profiles() == [ServiceProfile("p2", "empty"), profile]
    assert [s.id for s in await signin.profile_ucservices("p1")] == ["s2", "s1"]
    assert await signin.profile_ucservices("p2") == []
    with pytest.raises(NotFound):
        await signin.profile_ucservices("p9")
    with pytest.raises(Conflict):
        await signin.add_profile(ServiceProfile("p3", "nurses"))
    with pytest.raises(NotFound):
        await signin.add_profile(ServiceProfile("p4", "broken", ("missing",)))
    with pytest.raises(NotFound):
        await signin.get_profile_by_name("p4")


async def test_users(signin: SqlSigninRepository) -> None:
    await signin.add_profile(ServiceProfile("p1", "nurses"))
    await signin.add_user(user())
    await signin.add_user(user("bob", profile_id="p1"))
    with pytest.raises(Conflict):
        await signin.add_user(user(id="u-other"))
    assert await signin.get_user("u-alice") == user()
    assert await signin.get_user_by_name("bob") == user("bob", profile_id="p1")
    assert [u.username for u in await signin.list_users()] == ["alice", "bob"]
    await signin.set_user_profile("u-alice", "p1")
    assert (await signin.get_user("u-alice")).profile_id == "p1"
    await signin.set_user_profile("u-alice", None)
    assert (await signin.get_user("u-alice")).profile_id is None
    with pytest.raises(NotFound):
        await signin.set_user_profile("u-alice", "p-missing")
    with pytest.raises(NotFound):
        await signin.set_user_profile("u-nobody", None)
    with pytest.raises(NotFound):
        await signin.get_user_by_name("carol")


async def test_delete_user_takes_devices_and_tokens(signin: SqlSigninRepository) -> None:
    await signin.add_user(user())
    await signin.add_user(user("bob"))
    await signin.put_device(device(1))
    await signin.put_device(device(2, user_id="u-bob"))
    await signin.add_refresh_token(token(1))
    await signin.delete_user("u-alice")
    assert [d.id for d in await signin.list_devices()] == ["dev-2"]
    with pytest.raises(NotFound):
        await signin.get_refresh_token(token(1).token_hash)
    with pytest.raises(NotFound):
        await signin.delete_user("u-alice")


async def test_refresh_tokens(signin: SqlSigninRepository) -> None:
    await signin.add_user(user())
    await signin.add_refresh_token(token(1))
    await signin.add_refresh_token(token(2))
    await signin.add_refresh_token(token(3, device_id="dev-2"))
    assert await signin.get_refresh_token(token(1).token_hash) == token(1)
    with pytest.raises(Conflict):
        await signin.add_refresh_token(token(1))
    with pytest.raises(NotFound):
        await signin.add_refresh_token(token(4, user_id="u-nobody"))
    assert await signin.revoke_refresh_token(token(1).token_hash, T0)
    assert not await signin.revoke_refresh_token(token(1).token_hash, T0)  # replay
    assert await signin.revoke_device_refresh_tokens("u-alice", "dev-1", T0) == 1
    assert (await signin.get_refresh_token(token(3).token_hash)).revoked_at is None


async def test_device_round_trip_and_update(signin: SqlSigninRepository) -> None:
    await signin.add_user(user())
    await signin.put_device(device(1))
    assert await signin.get_device("dev-1") == device(1)
    rotated = device(
        1,
        push_key=bytes(32),
        push_key_id="k2",
        previous_push_key=KEY,
        previous_push_key_id="k1",
        previous_key_until=T0 + timedelta(hours=1),
        single_channel=True,
        china_region=True,
        callkit=False,
    )
    await signin.put_device(rotated)
    assert await signin.get_device("dev-1") == rotated
    assert rotated.valid_keys(T0) == {"k2": bytes(32), "k1": KEY}
    assert rotated.valid_keys(T0 + timedelta(hours=1)) == {"k2": bytes(32)}
    with pytest.raises(NotFound):
        await signin.put_device(device(5, user_id="u-nobody"))


async def test_devices_list_state_delete(signin: SqlSigninRepository) -> None:
    await signin.add_user(user())
    await signin.add_user(user("bob"))
    await signin.put_device(device(2))
    await signin.put_device(device(1, platform=Platform.ANDROID, service="FCM"))
    await signin.put_device(device(3, user_id="u-bob"))
    assert [d.id for d in await signin.list_devices()] == ["dev-1", "dev-2", "dev-3"]
    assert [d.id for d in await signin.list_devices("u-alice")] == ["dev-1", "dev-2"]
    later = T0 + timedelta(minutes=3)
    await signin.set_push_state("dev-2", PushState.SIGNED_OUT, later)
    got = await signin.get_device("dev-2")
    assert (got.push_state, got.signed_out_at, got.updated_at) == (
        PushState.SIGNED_OUT,
        later,
        later,
    )
    await signin.set_push_state("dev-1", PushState.PAUSED_INVALID_TOKEN, later)
    got = await signin.get_device("dev-1")
    assert got.push_state is PushState.PAUSED_INVALID_TOKEN and got.signed_out_at is None
    assert got.platform is Platform.ANDROID
    with pytest.raises(NotFound):
        await signin.set_push_state("dev-9", PushState.ACTIVE, later)
    await signin.delete_device("dev-1")
    with pytest.raises(NotFound):
        await signin.delete_device("dev-1")
    with pytest.raises(NotFound):
        await signin.get_device("dev-1")


async def test_find_devices_by_instance_pn_prid_or_token(signin: SqlSigninRepository) -> None:
    await signin.add_user(user())
    await signin.put_device(device(1))
    await signin.put_device(device(2, push_token="tok-2", pn_prid=""))
    await signin.put_device(device(3, push_token="tok-3", pn_prid="prid-3"))
    await signin.put_device(device(4, push_token="tok-4", pn_prid="prid-4"))
    found = await signin.find_devices(
        {device(1).sip_instance_id, ""}, {"tok-2", "prid-3", "unknown", ""}
    )
    assert [d.id for d in found] == ["dev-1", "dev-2", "dev-3"]
    assert await signin.find_devices(set(), set()) == []
    assert await signin.find_devices({""}, {""}) == []

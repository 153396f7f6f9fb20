"""Every ``SipRepository`` method, on SQLite and PostgreSQL."""

from __future__ import annotations

import inspect
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ucpush.store import Store, open_store
from ucpush.store.repository import Binding, Conflict, NotFound, SipRepository, SipUser
from ucpush.store.sql_sip import SqlSipRepository

T0 = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)
PRID = "a1b2c3d4" * 8
CONTACT = (
    "sip:alice@192.0.2.10:5060;transport=tcp;pn-provider=apns;"
    f"pn-prid={PRID};pn-param=ABCD123456.org.example.app.voip"
)


def user(name: str = "alice", realm: str = "example.org") -> SipUser:
    return SipUser(
        aor=f"sip:{name}@{realm}",
        username=name,
        realm=realm,
        ha1_md5="0" * 32,
        ha1_sha256="1" * 64,
        created_at=T0,
        display_name=name.title(),
    )


def binding(n: int = 1, aor: str = "sip:alice@example.org", **changes: Any) -> Binding:
    b = Binding(
        id=f"b{n}",
        aor=aor,
        contact=CONTACT,
        expires_at=T0 + timedelta(seconds=3600),
        call_id=f"call-{n}",
        cseq=n,
        updated_at=T0 + timedelta(seconds=n),
        instance_id=f'"<urn:uuid:00000000-0000-0000-0000-00000000000{n}>"',
        reg_id=1,
        q=0.5,
        path=("<sip:edge.example.org;lr>", "<sip:core.example.org;lr>"),
        source_transport="TCP",
        source_host="198.51.100.7",
        source_port=40123,
        pn_provider="apns",
        pn_prid=PRID,
        pn_param="ABCD123456.org.example.app.voip",
        pn_extra={"pn-foo": "bar"},
        purr=f"{n:02x}ff" * 8,
        purr_previous=f"{n:02x}ee" * 8,
        purr_issued_at=T0,
        pnsreg=True,
        user_agent="Linphone/5.1",
    )
    return replace(b, **changes)


@pytest.fixture
def sip(store: Store) -> SqlSipRepository:
    return store.sip


def test_implements_protocol() -> None:
    for name, member in inspect.getmembers(SipRepository, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = getattr(SqlSipRepository, name)
        assert inspect.signature(ours) == inspect.signature(member), name


async def test_user_round_trip(sip: SqlSipRepository) -> None:
    await sip.add_user(user())
    await sip.add_user(user("bob"))
    await sip.add_user(user("alice", "other.org"))
    assert await sip.get_user("alice", "example.org") == user()
    assert [(u.realm, u.username) for u in await sip.list_users()] == [
        ("example.org", "alice"),
        ("example.org", "bob"),
        ("other.org", "alice"),
    ]


async def test_user_errors(sip: SqlSipRepository) -> None:
    await sip.add_user(user())
    with pytest.raises(Conflict):
        await sip.add_user(user())
    with pytest.raises(Conflict):  # another account for the same AOR
        await sip.add_user(replace(user(), username="alice2"))
    with pytest.raises(NotFound):
        await sip.get_user("alice", "elsewhere.org")
    with pytest.raises(NotFound):
        await sip.delete_user("nobody", "example.org")


async def test_delete_user_removes_bindings(sip: SqlSipRepository) -> None:
    await sip.add_user(user())
    await sip.add_binding(binding(1))
    await sip.add_binding(binding(2, aor="sip:bob@example.org"))
    await sip.delete_user("alice", "example.org")
    assert await sip.list_users() == []
    assert [b.id for b in await sip.list_bindings()] == ["b2"]


async def test_binding_round_trip_exactly(sip: SqlSipRepository) -> None:
    await sip.add_binding(binding())
    got = await sip.get_binding("b1")
    assert got == binding()
    assert got.contact == CONTACT
    assert got.push_enabled
    assert got.expires_at.tzinfo is not None


async def test_binding_defaults_round_trip(sip: SqlSipRepository) -> None:
    plain = Binding(
        id="p",
        aor="sip:alice@example.org",
        contact="sip:alice@192.0.2.1",
        expires_at=T0,
        call_id="c",
        cseq=1,
        updated_at=T0,
    )
    await sip.add_binding(plain)
    got = await sip.get_binding("p")
    assert got == plain
    assert got.reg_id is None and got.q is None and not got.push_enabled


async def test_list_bindings(sip: SqlSipRepository) -> None:
    await sip.add_binding(binding(1))
    await sip.add_binding(binding(2))
    await sip.add_binding(binding(3, aor="sip:bob@example.org"))
    # Per AOR, most recently updated first.
    assert [b.id for b in await sip.list_bindings("sip:alice@example.org")] == ["b2", "b1"]
    assert [b.id for b in await sip.list_bindings()] == ["b2", "b1", "b3"]
    assert await sip.list_bindings("sip:nobody@example.org") == []


async def test_update_and_remove(sip: SqlSipRepository) -> None:
    await sip.add_binding(binding())
    changed = replace(binding(), cseq=9, pn_prid="", pn_provider="", pn_extra={}, path=())
    await sip.update_binding(changed)
    assert await sip.get_binding("b1") == changed
    await sip.remove_binding("b1")
    with pytest.raises(NotFound):
        await sip.get_binding("b1")
    with pytest.raises(NotFound):
        await sip.remove_binding("b1")
    with pytest.raises(NotFound):
        await sip.update_binding(changed)
    await sip.add_binding(binding())
    with pytest.raises(Conflict):
        await sip.add_binding(binding())


async def test_find_binding_by_purr(sip: SqlSipRepository) -> None:
    await sip.add_binding(binding(1))
    await sip.add_binding(binding(2))
    assert (await sip.find_binding_by_purr("02ff" * 8)).id == "b2"
    assert (await sip.find_binding_by_purr("01ee" * 8)).id == "b1"  # the replaced one
    await sip.add_binding(binding(3, purr="", purr_previous=""))
    for unknown in ("", "03ff" * 8):
        with pytest.raises(NotFound):
            await sip.find_binding_by_purr(unknown)


async def test_save_bindings_is_one_change(sip: SqlSipRepository) -> None:
    await sip.add_binding(binding(1))
    await sip.add_binding(binding(2))
    await sip.add_binding(binding(3, aor="sip:bob@example.org"))
    refreshed = replace(binding(1), cseq=5)
    # b3 belongs to another AOR and stays; "missing" is ignored.
    await sip.save_bindings(
        "sip:alice@example.org", [refreshed, binding(4)], ["b2", "b3", "missing"]
    )
    assert [b.id for b in await sip.list_bindings()] == ["b4", "b1", "b3"]
    assert (await sip.get_binding("b1")).cseq == 5


async def test_remove_expired(sip: SqlSipRepository) -> None:
    await sip.add_binding(binding(1, expires_at=T0))
    await sip.add_binding(binding(2, expires_at=T0 + timedelta(seconds=1)))
    await sip.add_binding(binding(3, expires_at=T0 - timedelta(hours=1), aor="sip:bob@x"))
    gone = await sip.remove_expired(T0)
    assert [b.id for b in gone] == ["b1", "b3"]
    assert gone[0] == binding(1, expires_at=T0)
    assert [b.id for b in await sip.list_bindings()] == ["b2"]
    assert await sip.remove_expired(T0) == []


async def test_bindings_survive_a_restart(store_url: str, sip: SqlSipRepository) -> None:
    await sip.add_user(user())
    await sip.add_binding(binding())
    async with await open_store(store_url) as reopened:
        assert await reopened.sip.list_bindings() == [binding()]
        assert await reopened.sip.get_user("alice", "example.org") == user()


async def test_sip_and_relay_share_an_in_memory_database() -> None:
    async with await open_store("sqlite+aiosqlite:///:memory:") as store:
        await store.sip.add_binding(binding())
        assert [b.id for b in await store.sip.list_bindings()] == ["b1"]
        assert await store.relay.list_tenants() == []


async def test_apply_bindings_writes_a_batch_in_one_transaction(sip: SqlSipRepository) -> None:
    await sip.add_binding(binding(1))
    await sip.add_binding(binding(2, aor="sip:bob@example.org"))
    refreshed = replace(binding(1), cseq=9, pn_extra={"pn-x": "y"}, path=())
    others = [binding(n, aor=f"sip:u{n}@example.org") for n in range(3, 1203)]
    # Across AORs; more removals than one DELETE takes; "missing" is ignored.
    await sip.apply_bindings(
        [refreshed, *others], ["b2", "missing", *(f"x{n}" for n in range(600))]
    )
    assert await sip.get_binding("b1") == refreshed
    with pytest.raises(NotFound):
        await sip.get_binding("b2")
    assert len(await sip.list_bindings()) == 1201
    await sip.apply_bindings([], [b.id for b in others])
    assert [b.id for b in await sip.list_bindings()] == ["b1"]
    await sip.apply_bindings([], [])  # nothing to do, no transaction


async def test_apply_bindings_is_all_or_nothing(sip: SqlSipRepository) -> None:
    await sip.add_binding(binding(1))
    broken = binding(2, contact=None)  # NOT NULL column: the batch fails
    with pytest.raises(Conflict):
        await sip.apply_bindings([binding(3), broken], ["b1"])
    assert [b.id for b in await sip.list_bindings()] == ["b1"]


async def test_get_users_in_one_query(sip: SqlSipRepository) -> None:
    names = [f"u{n:04d}" for n in range(600)]  # more than one IN list takes
    for name in names:
        await sip.add_user(user(name))
    await sip.add_user(user("alice", "other.example"))
    keys = [(name, "example.org") for name in names]
    wanted = [*keys, ("alice", "example.org"), ("nobody", "example.org")]
    found = await sip.get_users(wanted)
    assert sorted(u.username for u in found) == names
    assert found[0] == user(found[0].username)
    assert await sip.get_users([]) == []
    assert await sip.get_users([("alice", "other.example")]) == [user("alice", "other.example")]


async def test_list_bindings_page(sip: SqlSipRepository) -> None:
    for n in (3, 1, 2, 5, 4):
        await sip.add_binding(binding(n))
    assert [b.id for b in await sip.list_bindings_page(limit=2)] == ["b1", "b2"]
    assert [b.id for b in await sip.list_bindings_page("b2", 2)] == ["b3", "b4"]
    assert await sip.list_bindings_page("b4", 2) == [binding(5)]
    assert await sip.list_bindings_page("b5") == []


async def test_batched_rows_compare_like_single_ones(sip: SqlSipRepository) -> None:
    """Times written by the batch path order and expire exactly like add_binding's (SQLite
    compares them as text), whole seconds and other offsets included."""
    whole = T0.replace(microsecond=0)
    plus_two = timezone(timedelta(hours=2))
    await sip.add_binding(binding(1, expires_at=whole, updated_at=whole))
    await sip.apply_bindings(
        [
            binding(2, expires_at=whole, updated_at=whole.astimezone(plus_two)),
            binding(3, expires_at=whole + timedelta(microseconds=1), purr_issued_at=None),
            binding(4, expires_at=whole - timedelta(microseconds=1), pnsreg=False, q=None),
        ],
        [],
    )
    assert await sip.get_binding("b2") == binding(2, expires_at=whole, updated_at=whole)
    assert await sip.get_binding("b3") == binding(
        3, expires_at=whole + timedelta(microseconds=1), purr_issued_at=None
    )
    gone = await sip.remove_expired(whole)
    assert [b.id for b in gone] == ["b1", "b2", "b4"]
    assert gone[2] == binding(4, expires_at=whole - timedelta(microseconds=1), pnsreg=False, q=None)
    # Refused either way (SQLAlchemy wraps it in a StatementError on PostgreSQL).
    with pytest.raises(Exception, match="naive datetime"):
        await sip.apply_bindings([binding(5, expires_at=datetime(2026, 1, 1))], [])

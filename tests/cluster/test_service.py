"""ClusterService against the real Redis: membership and the active node, bindings shared
between nodes before the store has them, bad messages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from tests.cluster.conftest import REDIS_URL
from ucpush.cluster.service import ClusterService, PublishingBindings
from ucpush.cluster.sql import NodeGroup
from ucpush.config import ClusterSettings
from ucpush.lpns.service import LocalPushOutcome
from ucpush.sip.location import LocationCache
from ucpush.store.repository import Binding, SipUser

NOW = datetime.now(UTC)


class Groups:
    def __init__(self, *groups: NodeGroup) -> None:
        self.groups = list(groups)

    async def list_groups(self) -> list[NodeGroup]:
        return self.groups


class MemoryBindings:
    """A ``BindingStore`` that records what the write-behind wrote."""

    def __init__(self) -> None:
        self.written: list[Binding] = []

    async def get_users(self, keys: Sequence[tuple[str, str]]) -> list[SipUser]:
        return []

    async def list_bindings_page(self, after: str = "", limit: int = 5000) -> list[Binding]:
        return []

    async def save_bindings(self, aor: str, upsert: list[Binding], remove: list[str]) -> None:
        self.written += upsert

    async def apply_bindings(self, upsert: Sequence[Binding], remove: Sequence[str]) -> None:
        self.written += upsert


def settings(name: str, prefix: str) -> ClusterSettings:
    return ClusterSettings(
        enabled=True,
        node_name=name,
        redis_url=REDIS_URL,
        key_prefix=prefix,
        heartbeat_seconds=0.1,
        failure_timeout=0.4,
    )


def node(name: str, prefix: str, groups: Groups, **kwargs: Any) -> tuple[ClusterService, list[str]]:
    named: list[str] = []
    service = ClusterService(
        settings(name, prefix),
        sip_uri=f"sip:{name}.example;transport=tcp",
        groups=groups,
        on_active_node=named.append,
        **kwargs,
    )
    return service, named


async def until(check: Callable[[], Awaitable[bool] | bool], within: float = 3.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {within} s")


def binding(aor: str, bid: str, token: str = "tok") -> Binding:
    return Binding(
        id=bid,
        aor=aor,
        contact=f"<sip:{bid}@192.0.2.1:5060;pn-provider=apns;pn-prid={token}>",
        expires_at=NOW + timedelta(hours=1),
        call_id="c1",
        cseq=1,
        updated_at=NOW,
        path=("<sip:edge;lr>",),
        source_transport="TCP",
        source_host="192.0.2.1",
        source_port=5060,
        pn_provider="apns",
        pn_prid=token,
        pn_param="TEAM.org.example.voip",
        pn_extra={"pn-x": "1"},
        purr="p1",
        purr_issued_at=NOW,
        pnsreg=True,
    )


async def test_active_node_is_the_first_live_member_in_group_order(key_prefix: str) -> None:
    groups = Groups(NodeGroup("g", ("a", "b", "c"), NOW))
    b, b_named = node("b", key_prefix, groups)
    await b.start()
    try:
        assert b_named == ["sip:b.example;transport=tcp"]  # a is not up: b is active
        a, _ = node("a", key_prefix, groups)
        await a.start()
        await until(lambda: b_named[-1] == "sip:a.example;transport=tcp")
        # kill -9 of a: its heartbeats stop, its key is left to expire.
        for task in a._loops:
            task.cancel()
        took = await until(lambda: b_named[-1] == "sip:b.example;transport=tcp")
        assert took <= 0.4 + 0.1 + 0.3  # failure_timeout + one heartbeat (+ scheduling)
        await a.redis.aclose()
    finally:
        await b.stop()


async def test_a_clean_stop_hands_over_at_once_and_groups_are_reread(key_prefix: str) -> None:
    groups = Groups(NodeGroup("g", ("a", "b"), NOW))
    a, _ = node("a", key_prefix, groups)
    b, b_named = node("b", key_prefix, groups)
    await a.start()
    await b.start()
    try:
        assert b_named[-1].startswith("sip:a.")
        await a.stop()
        assert await until(lambda: b_named[-1].startswith("sip:b.")) < 0.35
        groups.groups = [NodeGroup("g", ("c", "b"), NOW)]  # changed with the CLI
        c, _ = node("c", key_prefix, groups)
        await c.start()
        await until(lambda: b_named[-1].startswith("sip:c."))
        await c.stop()
    finally:
        await b.stop()


async def test_node_outside_any_group_names_itself(key_prefix: str) -> None:
    lone, named = node("lone", key_prefix, Groups())
    async with lone:
        assert named == ["sip:lone.example;transport=tcp"]
        assert set(await lone.members()) == {"lone"}


async def test_register_on_one_node_is_seen_by_the_other_before_the_store(key_prefix: str) -> None:
    groups = Groups(NodeGroup("g", ("a", "b"), NOW))
    # A long write-behind window: the store has nothing while the other node must already know.
    a_store, b_store = MemoryBindings(), MemoryBindings()
    a_cache = LocationCache(a_store, flush_interval=2)
    b_cache = LocationCache(b_store, flush_interval=2)
    await a_cache.start()
    await b_cache.start()
    a, _ = node("a", key_prefix, groups, bindings=a_cache)
    b, _ = node("b", key_prefix, groups, bindings=b_cache)
    async with a, b:
        registrar = PublishingBindings(a_cache, a)
        aor = "sip:alice@example.org"
        started = time.monotonic()
        await registrar.save_bindings(aor, [binding(aor, "x1")], [])
        await until(lambda: b_cache.lookup(aor))
        assert time.monotonic() - started < 0.5
        [seen] = await b_cache.lookup(aor)
        assert seen == binding(aor, "x1")  # every field survived the trip
        assert a_store.written == [] and b_store.written == []
        assert b_cache.pending == 0  # the registering node writes the store, not this one
        # A second device, then the first one leaves: the whole set travels each time.
        await registrar.save_bindings(aor, [binding(aor, "x2", "tok2")], ["x1"])
        await until(lambda: _ids_are(b_cache, aor, ["x2"]))
        await registrar.save_bindings(aor, [], ["x2"])
        await until(lambda: _ids_are(b_cache, aor, []))
        # A node ignores its own messages and garbage on the channel.
        await a.redis.publish(f"{key_prefix}:bindings", "not json")
        await a.redis.publish(f"{key_prefix}:bindings", json.dumps({"from": "z"}))
        await registrar.save_bindings(aor, [binding(aor, "x3")], [])
        await until(lambda: _ids_are(b_cache, aor, ["x3"]))
    await a_cache.close()
    await b_cache.close()
    assert [b.id for b in a_store.written] == ["x3"] and b_store.written == []


async def _ids_are(cache: LocationCache, aor: str, expected: list[str]) -> bool:
    return [b.id for b in await cache.lookup(aor)] == expected


async def test_remote_push_to_a_node_without_the_session(key_prefix: str) -> None:
    groups = Groups(NodeGroup("g", ("a", "b"), NOW))
    a, _ = node("a", key_prefix, groups)
    async with a:
        # Nobody listens on b's request channel: answered at once, not after the timeout.
        started = time.monotonic()
        result = await a.deliver_remote("b", "dev1", "voip", "payload")
        assert result.outcome is LocalPushOutcome.NO_SESSION
        assert time.monotonic() - started < 0.5
        assert a.session_node("dev1") is None


async def test_session_mirror_follows_redis(key_prefix: str) -> None:
    groups = Groups(NodeGroup("g", ("a", "b"), NOW))
    a, _ = node("a", key_prefix, groups)
    async with a:
        client = aioredis.from_url(REDIS_URL)
        try:
            await client.set(f"{key_prefix}:lpns:session:dev9", "b")
            b, _ = node("b", key_prefix, groups)
            async with b:
                await b.session_opened("dev1")
                await until(lambda: a.session_node("dev1") == "b")
                assert b.session_node("dev9") == "b"  # loaded at start
                await b.session_closed("dev1")
                await until(lambda: a.session_node("dev1") is None)
            # b left: its sessions are no longer offered even where the mirror still has them.
            await until(lambda: a.session_node("dev9") is None)
        finally:
            await client.aclose()

"""Node groups and device pools in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ucpush.store import Store
from ucpush.store.repository import Conflict, NotFound

NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


async def test_groups_keep_their_order(store: Store) -> None:
    repo = store.cluster
    await repo.add_group("west", ["b", "a", "c"], NOW)
    await repo.add_group("east", ["c"], NOW)
    groups = await repo.list_groups()
    assert [(g.name, g.nodes) for g in groups] == [("east", ("c",)), ("west", ("b", "a", "c"))]
    assert (await repo.get_group("west")).created_at == NOW
    with pytest.raises(Conflict):
        await repo.add_group("west", ["x"], NOW)
    with pytest.raises(NotFound):
        await repo.get_group("north")


@pytest.mark.parametrize(
    "nodes", [[], ["a", "b", "c", "d"], ["a", "a"], ["a", ""], ["x" * 65]], ids=repr
)
async def test_bad_groups_are_refused_and_nothing_is_stored(store: Store, nodes: list[str]) -> None:
    with pytest.raises(ValueError):
        await store.cluster.add_group("g", nodes, NOW)
    assert await store.cluster.list_groups() == []


async def test_pools_map_users_to_a_group(store: Store) -> None:
    repo = store.cluster
    await repo.add_group("west", ["a", "b"], NOW)
    await repo.add_group("east", ["c", "b"], NOW)
    await repo.add_pool("phones", "west", NOW)
    await repo.add_pool("lab", "east", NOW)
    await repo.assign_users("phones", ["alice", "bob"])
    assert (await repo.group_of_user("alice")).nodes == ("a", "b")
    await repo.assign_users("lab", ["bob"])  # moves bob
    assert (await repo.group_of_user("bob")).name == "east"
    assert (await repo.group_of_user("alice")).name == "west"
    assert await repo.group_of_user("carol") is None
    assert [(p.name, p.group) for p in await repo.list_pools()] == [
        ("lab", "east"),
        ("phones", "west"),
    ]
    with pytest.raises(NotFound):
        await repo.add_pool("p", "nowhere", NOW)
    with pytest.raises(NotFound):
        await repo.assign_users("nowhere", ["alice"])
    assert (await repo.group_of_user("alice")).name == "west"

"""Node groups and device pools in the shared database (SPEC §3), on SQLAlchemy Core.

A node group is an ordered list of at most three node names (primary, secondary, tertiary);
a device pool maps users (sign-in user names, which are also the SIP user parts) to one group.
The tables hang off the shared ``sql.metadata`` and are created by migration 0009. Which
nodes are alive is not stored here: that is live state, in Redis (``ucpush.cluster.service``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from ucpush.store.repository import NotFound
from ucpush.store.sql import SqlRepositoryBase, UTCDateTime, metadata

MAX_GROUP_NODES = 3
NAME_LENGTH = 64

cluster_node_groups = sa.Table(
    "cluster_node_groups",
    metadata,
    sa.Column("name", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("primary_node", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("secondary_node", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("tertiary_node", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

cluster_device_pools = sa.Table(
    "cluster_device_pools",
    metadata,
    sa.Column("name", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column(
        "group_name",
        sa.String(NAME_LENGTH),
        sa.ForeignKey("cluster_node_groups.name", name="fk_cluster_device_pools_group"),
        nullable=False,
    ),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# A user is in at most one pool (primary key on the user).
cluster_pool_users = sa.Table(
    "cluster_pool_users",
    metadata,
    sa.Column("username", sa.String(255), primary_key=True),
    sa.Column(
        "pool_name",
        sa.String(NAME_LENGTH),
        sa.ForeignKey(
            "cluster_device_pools.name", name="fk_cluster_pool_users_pool", ondelete="CASCADE"
        ),
        nullable=False,
    ),
)


@dataclass(frozen=True, slots=True)
class NodeGroup:
    name: str
    nodes: tuple[str, ...]  # primary first; 1 to 3 distinct names
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DevicePool:
    name: str
    group: str
    created_at: datetime


def check_group(name: str, nodes: Sequence[str]) -> tuple[str, ...]:
    """The group's node list, or ``ValueError`` saying what is wrong with it."""
    if not name or len(name) > NAME_LENGTH:
        raise ValueError(f"group name must be 1-{NAME_LENGTH} characters")
    cleaned = tuple(n.strip() for n in nodes)
    if not 1 <= len(cleaned) <= MAX_GROUP_NODES:
        raise ValueError(f"a node group has 1 to {MAX_GROUP_NODES} nodes, in order")
    if any(not n or len(n) > NAME_LENGTH for n in cleaned):
        raise ValueError(f"node names must be 1-{NAME_LENGTH} characters")
    if len(set(cleaned)) != len(cleaned):
        raise ValueError("a node appears twice in the group")
    return cleaned


def _group(row: sa.Row[object]) -> NodeGroup:
    m = row._mapping
    nodes = (m["primary_node"], m["secondary_node"], m["tertiary_node"])
    return NodeGroup(m["name"], tuple(n for n in nodes if n), m["created_at"])


class SqlClusterRepository(SqlRepositoryBase):
    """Besides the documented errors: adding a taken name raises ``Conflict``."""

    async def add_group(self, name: str, nodes: Sequence[str], now: datetime) -> NodeGroup:
        ordered = check_group(name, nodes)
        padded = (*ordered, "", "")[:MAX_GROUP_NODES]
        await self._insert(
            cluster_node_groups,
            {
                "name": name,
                "primary_node": padded[0],
                "secondary_node": padded[1],
                "tertiary_node": padded[2],
                "created_at": now,
            },
        )
        return NodeGroup(name, ordered, now)

    async def list_groups(self) -> list[NodeGroup]:
        rows = await self._all(cluster_node_groups.select().order_by(cluster_node_groups.c.name))
        return [_group(r) for r in rows]

    async def get_group(self, name: str) -> NodeGroup:
        row = await self._one(
            cluster_node_groups.select().where(cluster_node_groups.c.name == name), "node group"
        )
        return _group(row)

    async def add_pool(self, name: str, group: str, now: datetime) -> DevicePool:
        """``NotFound`` if ``group`` does not exist."""
        if not name or len(name) > NAME_LENGTH:
            raise ValueError(f"pool name must be 1-{NAME_LENGTH} characters")
        await self.get_group(group)  # a clear NotFound on SQLite too (no FK enforcement)
        await self._insert(
            cluster_device_pools, {"name": name, "group_name": group, "created_at": now}
        )
        return DevicePool(name, group, now)

    async def list_pools(self) -> list[DevicePool]:
        rows = await self._all(cluster_device_pools.select().order_by(cluster_device_pools.c.name))
        return [DevicePool(r.name, r.group_name, r.created_at) for r in rows]

    async def assign_users(self, pool: str, usernames: Sequence[str]) -> None:
        """Put ``usernames`` in ``pool`` (moving them out of any other pool)."""
        async with self._begin() as conn:
            found = await conn.execute(
                sa.select(cluster_device_pools.c.name).where(cluster_device_pools.c.name == pool)
            )
            if found.first() is None:
                raise NotFound("device pool")
            users = list(dict.fromkeys(usernames))
            if not users:
                return
            await conn.execute(
                cluster_pool_users.delete().where(cluster_pool_users.c.username.in_(users))
            )
            await conn.execute(
                cluster_pool_users.insert(), [{"username": u, "pool_name": pool} for u in users]
            )

    async def group_of_user(self, username: str) -> NodeGroup | None:
        """The node group of the user's device pool; None when the user is in no pool."""
        query = (
            sa.select(cluster_node_groups)
            .join(
                cluster_device_pools,
                cluster_device_pools.c.group_name == cluster_node_groups.c.name,
            )
            .join(cluster_pool_users, cluster_pool_users.c.pool_name == cluster_device_pools.c.name)
            .where(cluster_pool_users.c.username == username)
        )
        rows = await self._all(query)
        return _group(rows[0]) if rows else None

"""Cluster: node groups (ordered, up to three nodes), device pools and their users.

Revision ID: 0009
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cluster_node_groups",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("primary_node", sa.String(64), nullable=False),
        sa.Column("secondary_node", sa.String(64), nullable=False),
        sa.Column("tertiary_node", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_cluster_node_groups"),
    )
    op.create_table(
        "cluster_device_pools",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("group_name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_name"], ["cluster_node_groups.name"], name="fk_cluster_device_pools_group"
        ),
        sa.PrimaryKeyConstraint("name", name="pk_cluster_device_pools"),
    )
    op.create_table(
        "cluster_pool_users",
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("pool_name", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["pool_name"],
            ["cluster_device_pools.name"],
            name="fk_cluster_pool_users_pool",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("username", name="pk_cluster_pool_users"),
    )


def downgrade() -> None:
    op.drop_table("cluster_pool_users")
    op.drop_table("cluster_device_pools")
    op.drop_table("cluster_node_groups")

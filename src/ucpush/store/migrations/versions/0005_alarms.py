"""Alarms: the node's active alarms and history, alarm upload settings, and the relay's store
of tenants' uploaded alarms.

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "alarms",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        _timestamp("raised_at"),
        _timestamp("last_raised_at"),
        sa.Column("count", sa.Integer(), nullable=False),
        _timestamp("cleared_at", nullable=True),
        _timestamp("changed_at"),
        _timestamp("uploaded_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alarms"),
    )
    op.create_index("ix_alarms_cleared_at", "alarms", ["cleared_at"])
    op.create_index("ix_alarms_node_name_key", "alarms", ["node", "name", "key"])
    op.create_table(
        "alarm_settings",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("push_frequency_minutes", sa.Integer(), nullable=True),
        sa.Column("min_push_level", sa.String(16), nullable=True),
        _timestamp("push_requested_at", nullable=True),
        _timestamp("push_result_at", nullable=True),
        sa.Column("push_error", sa.Text(), nullable=False),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_alarm_settings"),
    )
    op.create_table(
        "tenant_alarms",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("alarm_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("cluster_id", sa.String(255), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        _timestamp("raised_at"),
        _timestamp("last_raised_at"),
        _timestamp("cleared_at", nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("pii", sa.Text(), nullable=True),
        _timestamp("received_at"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_tenant_alarms_tenant_id_tenants"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "alarm_id", name="pk_tenant_alarms"),
    )
    op.create_index("ix_tenant_alarms_received_at", "tenant_alarms", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_tenant_alarms_received_at", table_name="tenant_alarms")
    op.drop_table("tenant_alarms")
    op.drop_table("alarm_settings")
    op.drop_index("ix_alarms_node_name_key", table_name="alarms")
    op.drop_index("ix_alarms_cleared_at", table_name="alarms")
    op.drop_table("alarms")

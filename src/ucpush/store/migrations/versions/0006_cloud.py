"""Call node: cloud onboarding state (one row) and admin users.

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cloud_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("cluster_id", sa.String(64), nullable=False),
        sa.Column("relay_url", sa.String(1024), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("refresh_token_sealed", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("alarm", sa.String(128), nullable=False),
        sa.Column("detail", sa.String(1024), nullable=False),
        sa.Column("push_enabled", sa.Boolean(), nullable=False),
        sa.Column("system_ca", sa.Boolean(), nullable=False),
        sa.Column("ca_bundle", sa.Text(), nullable=False),
        sa.Column("proxy_host", sa.String(255), nullable=False),
        sa.Column("proxy_port", sa.Integer(), nullable=False),
        sa.Column("proxy_username", sa.String(255), nullable=False),
        sa.Column("proxy_password_sealed", sa.Text(), nullable=False),
        sa.Column("proxy_auth", sa.String(16), nullable=False),
        sa.Column("send_troubleshooting", sa.Boolean(), nullable=False),
        sa.Column("encrypt_pii", sa.Boolean(), nullable=False),
        sa.Column("pii_token_sealed", sa.Text(), nullable=False),
        sa.Column("push_high_availability", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cloud_state"),
    )
    op.create_table(
        "admin_users",
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("username", name="pk_admin_users"),
    )


def downgrade() -> None:
    op.drop_table("admin_users")
    op.drop_table("cloud_state")

"""Relay tables: tenants, vouchers, machine accounts, refresh tokens, signing keys, apps.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
    )
    op.create_table(
        "vouchers",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        _timestamp("created_at"),
        _timestamp("expires_at"),
        _timestamp("used_at", nullable=True),
        sa.PrimaryKeyConstraint("code_hash", name="pk_vouchers"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_vouchers_tenant_id_tenants"
        ),
    )
    op.create_index("ix_vouchers_tenant_id", "vouchers", ["tenant_id"])
    op.create_table(
        "machine_accounts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("cluster_id", sa.String(255), nullable=False),
        sa.Column("cluster_name", sa.String(255), nullable=False),
        _timestamp("created_at"),
        _timestamp("disabled_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_machine_accounts"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_machine_accounts_tenant_id_tenants"
        ),
    )
    op.create_index("ix_machine_accounts_tenant_id", "machine_accounts", ["tenant_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        _timestamp("created_at"),
        _timestamp("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_refresh_tokens"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["machine_accounts.id"],
            name="fk_refresh_tokens_account_id_machine_accounts",
        ),
    )
    op.create_index("ix_refresh_tokens_account_id", "refresh_tokens", ["account_id"])
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("private_pem", sa.LargeBinary(), nullable=False),
        _timestamp("created_at"),
        _timestamp("retired_at", nullable=True),
        sa.PrimaryKeyConstraint("kid", name="pk_signing_keys"),
    )
    op.create_table(
        "provider_apps",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("service", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("credentials_file", sa.String(1024), nullable=False),
        sa.Column("environment", sa.String(16), nullable=False),
        sa.Column("team_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "service", name="pk_provider_apps"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_provider_apps_tenant_id_tenants"
        ),
    )


def downgrade() -> None:
    # Children before the tables they refer to.
    for table in (
        "provider_apps",
        "signing_keys",
        "refresh_tokens",
        "machine_accounts",
        "vouchers",
        "tenants",
    ):
        op.drop_table(table)

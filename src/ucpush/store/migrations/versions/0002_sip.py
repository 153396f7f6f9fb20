"""SIP registrar tables: users (digest HA1 hashes) and bindings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "sip_users",
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("realm", sa.String(255), nullable=False),
        sa.Column("aor", sa.String(512), nullable=False),
        sa.Column("ha1_md5", sa.String(32), nullable=False),
        sa.Column("ha1_sha256", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(255), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("username", "realm", name="pk_sip_users"),
        sa.UniqueConstraint("aor", name="uq_sip_users_aor"),
    )
    op.create_table(
        "sip_bindings",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("aor", sa.String(512), nullable=False),
        sa.Column("contact", sa.Text(), nullable=False),
        _timestamp("expires_at"),
        sa.Column("call_id", sa.String(255), nullable=False),
        sa.Column("cseq", sa.BigInteger(), nullable=False),
        _timestamp("updated_at"),
        sa.Column("instance_id", sa.String(255), nullable=False),
        sa.Column("reg_id", sa.BigInteger(), nullable=True),
        sa.Column("q", sa.Float(), nullable=True),
        sa.Column("path", sa.JSON(), nullable=False),
        sa.Column("source_transport", sa.String(16), nullable=False),
        sa.Column("source_host", sa.String(255), nullable=False),
        sa.Column("source_port", sa.Integer(), nullable=False),
        sa.Column("pn_provider", sa.String(64), nullable=False),
        sa.Column("pn_prid", sa.Text(), nullable=False),
        sa.Column("pn_param", sa.Text(), nullable=False),
        sa.Column("pn_extra", sa.JSON(), nullable=False),
        sa.Column("purr", sa.String(64), nullable=False),
        sa.Column("purr_previous", sa.String(64), nullable=False),
        sa.Column("purr_issued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pnsreg", sa.Boolean(), nullable=False),
        sa.Column("user_agent", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sip_bindings"),
    )
    op.create_index("ix_sip_bindings_aor", "sip_bindings", ["aor"])
    op.create_index("ix_sip_bindings_expires_at", "sip_bindings", ["expires_at"])
    op.create_index("ix_sip_bindings_pn_prid", "sip_bindings", ["pn_prid"])
    op.create_index("ix_sip_bindings_purr", "sip_bindings", ["purr"])
    op.create_index("ix_sip_bindings_purr_previous", "sip_bindings", ["purr_previous"])


def downgrade() -> None:
    op.drop_table("sip_bindings")
    op.drop_table("sip_users")

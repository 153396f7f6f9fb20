"""Call profiles: per-AOR mobility identity and external presentation for call push.

Revision ID: 0010
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "call_profiles",
        sa.Column("aor", sa.String(255), nullable=False),
        sa.Column("mobility_number", sa.String(64), nullable=False),
        sa.Column("presentation_name", sa.String(255), nullable=False),
        sa.Column("presentation_number", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("aor", name="pk_call_profiles"),
    )


def downgrade() -> None:
    op.drop_table("call_profiles")

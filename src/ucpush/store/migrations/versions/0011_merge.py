"""Join the components' migrations (alarms, cloud, device token index, cluster, call profiles)
that branched off 0003 while they were written in parallel: one head again.

Revision ID: 0011
Revises: 0005, 0006, 0008, 0009, 0010
Create Date: 2026-11-25
"""

from collections.abc import Sequence

revision: str = "0011"
down_revision: str | Sequence[str] | None = ("0005", "0006", "0008", "0009", "0010")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass  # nothing to change: the branches' tables are all there


def downgrade() -> None:
    pass

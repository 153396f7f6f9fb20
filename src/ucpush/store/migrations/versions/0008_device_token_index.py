"""Index devices by push token: call push finds a callee's devices by the pn-prid of their
bindings, which is the push token when the app did not report a separate pn-prid.

Revision ID: 0008
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_devices_push_token", "devices", ["push_token"])


def downgrade() -> None:
    op.drop_index("ix_devices_push_token", table_name="devices")

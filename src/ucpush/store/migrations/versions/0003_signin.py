"""Client sign-in: end users, refresh tokens, devices, enterprise parameters, UC services and
service profiles.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "enterprise_params",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("oauth_refresh_login", sa.Boolean(), nullable=False),
        sa.Column("access_token_minutes", sa.Integer(), nullable=False),
        sa.Column("refresh_token_days", sa.Integer(), nullable=False),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_enterprise_params"),
    )
    op.create_table(
        "uc_services",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_uc_services"),
        sa.UniqueConstraint("name", name="uq_uc_services_name"),
    )
    op.create_table(
        "service_profiles",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_service_profiles"),
        sa.UniqueConstraint("name", name="uq_service_profiles_name"),
    )
    op.create_table(
        "service_profile_ucservices",
        sa.Column("profile_id", sa.String(64), nullable=False),
        sa.Column("ucservice_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["service_profiles.id"],
            name="fk_service_profile_ucservices_profile_id_service_profiles",
        ),
        sa.ForeignKeyConstraint(
            ["ucservice_id"],
            ["uc_services.id"],
            name="fk_service_profile_ucservices_ucservice_id_uc_services",
        ),
        sa.PrimaryKeyConstraint("profile_id", "ucservice_id", name="pk_service_profile_ucservices"),
    )
    op.create_table(
        "end_users",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("display_name", sa.String(255), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("profile_id", sa.String(64), nullable=True),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["profile_id"], ["service_profiles.id"], name="fk_end_users_profile_id_service_profiles"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_end_users"),
        sa.UniqueConstraint("username", name="uq_end_users_username"),
    )
    op.create_table(
        "client_refresh_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        _timestamp("created_at"),
        _timestamp("expires_at"),
        _timestamp("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["end_users.id"], name="fk_client_refresh_tokens_user_id_end_users"
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_client_refresh_tokens"),
    )
    op.create_index("ix_client_refresh_tokens_user_id", "client_refresh_tokens", ["user_id"])
    op.create_table(
        "devices",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("service", sa.String(32), nullable=False),
        sa.Column("push_token", sa.String(4096), nullable=False),
        sa.Column("push_key", sa.LargeBinary(), nullable=False),
        sa.Column("push_key_id", sa.String(64), nullable=False),
        sa.Column("previous_push_key", sa.LargeBinary(), nullable=False),
        sa.Column("previous_push_key_id", sa.String(64), nullable=False),
        _timestamp("previous_key_until", nullable=True),
        sa.Column("single_channel", sa.Boolean(), nullable=False),
        sa.Column("china_region", sa.Boolean(), nullable=False),
        sa.Column("callkit", sa.Boolean(), nullable=False),
        sa.Column("sip_instance_id", sa.String(255), nullable=False),
        sa.Column("pn_prid", sa.Text(), nullable=False),
        sa.Column("push_state", sa.String(32), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("signed_out_at", nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["end_users.id"], name="fk_devices_user_id_end_users"),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
    )
    op.create_index("ix_devices_user_id", "devices", ["user_id"])
    op.create_index("ix_devices_sip_instance_id", "devices", ["sip_instance_id"])
    op.create_index("ix_devices_pn_prid", "devices", ["pn_prid"])


def downgrade() -> None:
    op.drop_table("devices")
    op.drop_table("client_refresh_tokens")
    op.drop_table("end_users")
    op.drop_table("service_profile_ucservices")
    op.drop_table("service_profiles")
    op.drop_table("uc_services")
    op.drop_table("enterprise_params")

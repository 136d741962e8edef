"""temporary credits (the durable revert schedule) and a reason on quota records

Revision ID: 0003_tempcredit
Revises: 0002_tenancy
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_tempcredit"
down_revision = "0002_tenancy"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ROLES = ("ADMIN", "OPERATOR", "VIEWER", "BILLING", "END_USER")


def upgrade() -> None:
    with op.batch_alter_table("quota_adjustments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))

    op.create_table(
        "temporary_credits",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("partner_id", BIG_ID, nullable=False),
        sa.Column("pool_id", BIG_ID, nullable=False),
        sa.Column("account_id", BIG_ID, nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("ACTIVE", "EXPIRED", "REVOKED", name="temporarycreditstatus", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "method",
            sa.Enum("PLATFORM", "API", "SYSTEM", name="operationmethod", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("operator_uid", sa.String(length=64), nullable=True),
        sa.Column("operator_name", sa.String(length=200), nullable=True),
        sa.Column("operator_is_ram", sa.Boolean(), nullable=False),
        sa.Column("operator_role", sa.Enum(*ROLES, name="role", native_enum=False, length=32), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reverted_cents", sa.BigInteger(), nullable=True),
        sa.Column("ended_by_uid", sa.String(length=64), nullable=True),
        sa.Column("ended_by_name", sa.String(length=200), nullable=True),
        sa.Column("ended_by_is_ram", sa.Boolean(), nullable=False),
        sa.Column("ended_by_role", sa.Enum(*ROLES, name="role", native_enum=False, length=32), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_temporary_credits_account_id_accounts")),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.id"], name=op.f("fk_temporary_credits_partner_id_partners")),
        sa.ForeignKeyConstraint(["pool_id"], ["quota_pools.id"], name=op.f("fk_temporary_credits_pool_id_quota_pools")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_temporary_credits")),
    )
    with op.batch_alter_table("temporary_credits", schema=None) as batch_op:
        batch_op.create_index("ix_temporary_credits_status_ends", ["status", "ends_at"], unique=False)
        batch_op.create_index("ix_temporary_credits_pool_status", ["pool_id", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("temporary_credits", schema=None) as batch_op:
        batch_op.drop_index("ix_temporary_credits_pool_status")
        batch_op.drop_index("ix_temporary_credits_status_ends")
    op.drop_table("temporary_credits")
    with op.batch_alter_table("quota_adjustments", schema=None) as batch_op:
        batch_op.drop_column("reason")

"""alert thresholds per pool, pending automatic actions, threshold columns on alert events

Revision ID: 0003_alerts
Revises: 0003_tempcredit
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_alerts"
down_revision = "0003_tempcredit"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
KINDS = ("PERCENT_OF_QUOTA", "AVAILABLE_BELOW", "RUNS_OUT_WITHIN_DAYS")
SEVERITIES = ("INFO", "WARNING", "CRITICAL")
ACTIONS = ("BAN_PURCHASES", "FREEZE_PAYG")


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=32)


def upgrade() -> None:
    op.create_table(
        "quota_thresholds",
        sa.Column("id", ID, nullable=False),
        sa.Column("partner_id", ID, nullable=False),
        sa.Column("pool_id", ID, nullable=False),
        sa.Column("kind", _enum(KINDS, "thresholdkind"), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("severity", _enum(SEVERITIES, "alertseverity"), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=True),
        sa.Column("action", _enum(ACTIONS, "thresholdaction"), nullable=True),
        sa.Column("requires_approval", sa.Boolean(), nullable=False),
        sa.Column("below", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.id"], name=op.f("fk_quota_thresholds_partner_id_partners")),
        sa.ForeignKeyConstraint(["pool_id"], ["quota_pools.id"], name=op.f("fk_quota_thresholds_pool_id_quota_pools")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_thresholds")),
    )
    with op.batch_alter_table("quota_thresholds", schema=None) as batch_op:
        batch_op.create_index("ix_quota_thresholds_pool", ["pool_id", "id"], unique=False)

    op.create_table(
        "pending_actions",
        sa.Column("id", ID, nullable=False),
        sa.Column("partner_id", ID, nullable=False),
        sa.Column("pool_id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("threshold_id", sa.BigInteger(), nullable=True),
        sa.Column("alert_event_id", sa.BigInteger(), nullable=True),
        sa.Column("action", _enum(ACTIONS, "thresholdaction"), nullable=False),
        sa.Column("severity", _enum(SEVERITIES, "alertseverity"), nullable=False),
        sa.Column("status", _enum(("PENDING", "APPROVED", "DISMISSED"), "pendingactionstatus"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_pending_actions_account_id_accounts")),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.id"], name=op.f("fk_pending_actions_partner_id_partners")),
        sa.ForeignKeyConstraint(["pool_id"], ["quota_pools.id"], name=op.f("fk_pending_actions_pool_id_quota_pools")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_actions")),
    )
    with op.batch_alter_table("pending_actions", schema=None) as batch_op:
        batch_op.create_index("ix_pending_actions_partner", ["partner_id", "status", "id"], unique=False)

    with op.batch_alter_table("alert_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("threshold_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("threshold_kind", _enum(KINDS, "thresholdkind"), nullable=True))
        batch_op.add_column(sa.Column("severity", _enum(SEVERITIES, "alertseverity"), nullable=True))
        batch_op.add_column(sa.Column("days_left", sa.Integer(), nullable=True))

    # Every existing warning percent becomes its pool's first PERCENT_OF_QUOTA threshold, on the side the
    # pool remembered, so no crossing is reported twice or lost by the upgrade.
    op.execute(
        sa.text(
            "INSERT INTO quota_thresholds (partner_id, pool_id, kind, value, severity, recipients, action, "
            "requires_approval, below, created_at, updated_at) "
            "SELECT partner_id, id, 'PERCENT_OF_QUOTA', warning_percent, 'WARNING', NULL, NULL, :false, "
            "warning_below, updated_at, updated_at FROM quota_pools WHERE warning_percent IS NOT NULL "
            "ORDER BY id"
        ).bindparams(false=False)
    )


def downgrade() -> None:
    with op.batch_alter_table("alert_events", schema=None) as batch_op:
        batch_op.drop_column("days_left")
        batch_op.drop_column("severity")
        batch_op.drop_column("threshold_kind")
        batch_op.drop_column("threshold_id")
    with op.batch_alter_table("pending_actions", schema=None) as batch_op:
        batch_op.drop_index("ix_pending_actions_partner")
    op.drop_table("pending_actions")
    with op.batch_alter_table("quota_thresholds", schema=None) as batch_op:
        batch_op.drop_index("ix_quota_thresholds_pool")
    op.drop_table("quota_thresholds")

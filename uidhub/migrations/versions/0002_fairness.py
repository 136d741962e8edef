"""fairness: the export claim's index, and the outbox's "maybe sent" mark

Revision ID: 0002_fairness
Revises: 0002_webhooks
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_fairness"
down_revision = "0002_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_export_status_partner", ["status", "partner_id", "id"], unique=False)
    with op.batch_alter_table("email_notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("maybe_sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("email_notifications", schema=None) as batch_op:
        batch_op.drop_column("maybe_sent_at")
    with op.batch_alter_table("export_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_export_status_partner")

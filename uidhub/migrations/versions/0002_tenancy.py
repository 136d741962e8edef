"""api_tokens.prefix: the first characters of each new token, to list and revoke tokens without their secret

Revision ID: 0002_tenancy
Revises: 0002_fairness
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_tenancy"
down_revision = "0002_fairness"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Tokens created before this revision have no prefix (only their hash was kept): they are listed with
    # their id, and revoked by id.
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prefix", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_api_tokens_prefix"), ["prefix"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_prefix"))
        batch_op.drop_column("prefix")

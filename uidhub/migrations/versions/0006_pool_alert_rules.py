"""quota_pools.alert_rules: how many alert rules watch a pool, kept by triggers

Revision ID: 0006_pool_alert_rules
Revises: 0005_status_type_counters
Create Date: 2026-12-02

A balance change evaluates the pool's alert rules (its thresholds, the enabled credit alerts of its
accounts) after its UPDATE, with the pool row locked: one more query, and one more round trip with the lock
held, for every consumption, although most pools have no rule at all. The count on the pool row, returned by
the change's own UPDATE (the current version of the row it locks), tells when there is nothing to read.

Triggers keep it: every INSERT, DELETE and pool move of a threshold, and every INSERT, DELETE, enabling,
disabling and pool move of a credit alert, adds or subtracts one on the pool row in the same statement. A
threshold or credit alert change already locks its pool (resolvers.locks), so the count changes under the
same lock as the rules themselves. The `below` flips of an evaluation touch neither trigger. The upgrade
counts every pool's rules under a lock that keeps writers of the rules out meanwhile (PostgreSQL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_pool_alert_rules"
down_revision = "0005_status_type_counters"
branch_labels = None
depends_on = None

#: Only the pools that have a rule are written (the column's default is 0 for the others): a write to a pool
#: row fires the listing's trigger (0004_scale), and a million pools without rules need none.
COUNT = """UPDATE quota_pools SET alert_rules =
  (SELECT count(*) FROM quota_thresholds t WHERE t.pool_id = quota_pools.id)
  + (SELECT count(*) FROM credit_alerts c WHERE c.pool_id = quota_pools.id AND c.enabled)
WHERE id IN (SELECT pool_id FROM quota_thresholds UNION SELECT pool_id FROM credit_alerts WHERE enabled)"""

PG_FUNCTION = """CREATE OR REPLACE FUNCTION uidhub_pool_alert_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'quota_thresholds' THEN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
      UPDATE quota_pools SET alert_rules = alert_rules - 1 WHERE id = OLD.pool_id;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
      UPDATE quota_pools SET alert_rules = alert_rules + 1 WHERE id = NEW.pool_id;
    END IF;
  ELSE
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.enabled THEN
      UPDATE quota_pools SET alert_rules = alert_rules - 1 WHERE id = OLD.pool_id;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.enabled THEN
      UPDATE quota_pools SET alert_rules = alert_rules + 1 WHERE id = NEW.pool_id;
    END IF;
  END IF;
  RETURN NULL;
END $$"""

PG_TRIGGERS = (
    "CREATE TRIGGER trg_thresholds_alert_rules AFTER INSERT OR DELETE OR UPDATE OF pool_id ON quota_thresholds "
    "FOR EACH ROW EXECUTE FUNCTION uidhub_pool_alert_rules()",
    "CREATE TRIGGER trg_credit_alerts_alert_rules AFTER INSERT OR DELETE OR UPDATE OF pool_id, enabled "
    "ON credit_alerts FOR EACH ROW EXECUTE FUNCTION uidhub_pool_alert_rules()",
)


def _sqlite_triggers() -> list[str]:
    def change(delta: str, pool: str) -> str:
        return f"UPDATE quota_pools SET alert_rules = alert_rules + ({delta}) WHERE id = {pool};"

    return [
        "CREATE TRIGGER trg_thresholds_alert_rules_insert AFTER INSERT ON quota_thresholds "
        f"BEGIN {change('1', 'NEW.pool_id')} END",
        "CREATE TRIGGER trg_thresholds_alert_rules_delete AFTER DELETE ON quota_thresholds "
        f"BEGIN {change('-1', 'OLD.pool_id')} END",
        "CREATE TRIGGER trg_thresholds_alert_rules_update AFTER UPDATE OF pool_id ON quota_thresholds "
        f"BEGIN {change('-1', 'OLD.pool_id')} {change('1', 'NEW.pool_id')} END",
        "CREATE TRIGGER trg_credit_alerts_alert_rules_insert AFTER INSERT ON credit_alerts "
        f"BEGIN {change('NEW.enabled', 'NEW.pool_id')} END",
        "CREATE TRIGGER trg_credit_alerts_alert_rules_delete AFTER DELETE ON credit_alerts "
        f"BEGIN {change('-OLD.enabled', 'OLD.pool_id')} END",
        "CREATE TRIGGER trg_credit_alerts_alert_rules_update AFTER UPDATE OF pool_id, enabled ON credit_alerts "
        f"BEGIN {change('-OLD.enabled', 'OLD.pool_id')} {change('NEW.enabled', 'NEW.pool_id')} END",
    ]


SQLITE_TRIGGER_NAMES = (
    "trg_thresholds_alert_rules_insert",
    "trg_thresholds_alert_rules_delete",
    "trg_thresholds_alert_rules_update",
    "trg_credit_alerts_alert_rules_insert",
    "trg_credit_alerts_alert_rules_delete",
    "trg_credit_alerts_alert_rules_update",
)


def upgrade() -> None:
    op.add_column("quota_pools", sa.Column("alert_rules", sa.Integer(), nullable=False, server_default="0"))
    if op.get_bind().dialect.name == "postgresql":
        # Writers of the rules wait until this transaction commits: none changes a rule the count misses.
        op.execute("LOCK TABLE quota_thresholds, credit_alerts IN SHARE MODE")
        op.execute(PG_FUNCTION)
        for statement in PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in _sqlite_triggers():
            op.execute(statement)
    op.execute(COUNT)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trg_thresholds_alert_rules ON quota_thresholds")
        op.execute("DROP TRIGGER IF EXISTS trg_credit_alerts_alert_rules ON credit_alerts")
        op.execute("DROP FUNCTION IF EXISTS uidhub_pool_alert_rules()")
    else:
        for name in SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    with op.batch_alter_table("quota_pools") as batch:
        batch.drop_column("alert_rules")

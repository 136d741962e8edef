"""per-partner counters per account status and per account type

Revision ID: 0005_status_type_counters
Revises: 0004_scale
Create Date: 2026-12-01

`totalCount` with exactly one status filter (`accountStatuses`) or one type filter (`accountTypes`) was an
exact COUNT over the matching listing rows: O(accounts) when most accounts match (NORMAL, END_USER). These
columns let it read the counters instead (resolvers.accounts.counter_shape):

- `status_<status>`: accounts with that status, DELETED included (a filter on DELETED lists them);
- `type_<type>`: non-deleted accounts of that type (a type filter hides deleted accounts, like the list).

The same triggers as 0004_scale maintain them (the counters function and triggers are recreated with the
extra columns), so every write that moves them — linkAccount, import-accounts, status changes — moves them in
its own statement. The upgrade recomputes every partner's counters from the listing rows, under a lock that
keeps writers out meanwhile (PostgreSQL), so that no delta row is counted twice or lost.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0005_status_type_counters"
down_revision = "0004_scale"
branch_labels = None
depends_on = None

STATUSES = ("NORMAL", "TO_BE_CONFIRMED", "IN_PROCESS", "TERMINATED", "DELETED")
TYPES = ("END_USER", "ENTERPRISE", "RESELLER")
NEW_COLUMNS = tuple(f"status_{s.lower()}" for s in STATUSES) + tuple(f"type_{t.lower()}" for t in TYPES)


def _scale() -> ModuleType:
    """Migration 0004_scale, whose counter SQL builders this one reuses with more columns (a revision file is
    not an importable module: its name starts with a digit)."""
    path = Path(__file__).with_name("0004_scale.py")
    spec = importlib.util.spec_from_file_location("uidhub_migration_0004_scale", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def contributions(r: str) -> list[str]:
    """0004's contributions of listing row `r`, then one per status and one per type (NEW_COLUMNS order)."""
    flag = "CASE WHEN {} THEN 1 ELSE 0 END".format
    return [
        *_scale().contributions(r),
        *(flag(f"{r}.status = '{s}'") for s in STATUSES),
        *(flag(f"{r}.status <> 'DELETED' AND {r}.account_type = '{t}'") for t in TYPES),
    ]


def _install(columns: tuple[str, ...], contribs: object, inputs: tuple[str, ...]) -> None:
    """(Re)create the listing → counters triggers for `columns` and recompute every partner's counters."""
    scale = _scale()
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        # Writers of the listing wait until this transaction commits: none adds a delta row the recount misses
        # or counts twice.
        op.execute("LOCK TABLE account_listing IN SHARE MODE")
        op.execute(scale.pg_counters_function(columns, contribs, replace=True))
    else:
        for name in ("trg_listing_counters_insert", "trg_listing_counters_update", "trg_listing_counters_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        for statement in scale.sqlite_counter_triggers(columns, contribs, inputs):
            op.execute(statement)
    op.execute("DELETE FROM partner_account_counters")
    op.execute(scale.counters_from_listing(columns, contribs))


def upgrade() -> None:
    scale = _scale()
    for column in NEW_COLUMNS:
        op.add_column(
            "partner_account_counters", sa.Column(column, sa.BigInteger(), nullable=False, server_default="0")
        )
    _install(
        tuple(scale.COUNTER_COLUMNS) + NEW_COLUMNS,
        contributions,
        (*scale.COUNTER_INPUTS, "account_type"),
    )


def downgrade() -> None:
    scale = _scale()
    _install(tuple(scale.COUNTER_COLUMNS), scale.contributions, tuple(scale.COUNTER_INPUTS))
    for column in NEW_COLUMNS:
        op.drop_column("partner_account_counters", column)

"""scale: the account listing, per-partner counters, search indexes, and the triggers that keep them in step

Revision ID: 0004_scale
Revises: 0003_alerts
Create Date: 2026-12-01

Everything the account list needs at a million accounts, maintained by the
database itself (see models/listing.py for why triggers, and why a table of
its own):

- `account_listing`: one row per account with its pool's available amount,
  quota, credit control and warning side, and its effective freeze and ban;
  indexed per list order with the partner and the `uid` tie-breaker.
- `partner_account_counters`: what `summary` and an unfiltered `totalCount`
  read. SQLite keeps one row per partner; PostgreSQL appends one delta row per
  statement (no hot row, no lock to wait for) and readers fold them.
- search: a `varchar_pattern_ops` index on uid (prefixes) and pg_trgm GIN indexes on uid, nickname and
  remarks (PostgreSQL); an
  FTS5 `trigram` table over the same columns of `accounts` (SQLite ≥ 3.34).

Triggers: `accounts` INSERT/UPDATE → listing; `quota_pools` UPDATE → the
listing rows of the pool; listing INSERT/UPDATE/DELETE → counters; on SQLite
`accounts` → the FTS table. An account's `pool_id` and `partner_id` never
change after linking (no code path moves them), so the account triggers do not
re-read the pool.

The upgrade backfills the listing, the counters and the search index from the
rows already there, before the triggers exist (so nothing is counted twice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import sqlalchemy as sa
from alembic import op

revision = "0004_scale"
down_revision = "0003_alerts"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

LISTING_COLUMNS = (
    "account_id, partner_id, pool_id, master_id, uid, account_type, status, linked_at, nickname_key, available_cents, "
    "amount_cents, credit_control_status, shutdown, below_warning, frozen, banned"
)
COUNTER_COLUMNS = (
    "accounts",
    "owners",
    "frozen",
    "banned",
    "shutdown",
    "below_warning",
    "total_quota_cents",
    "total_available_cents",
    "total_outstanding_cents",
)


def available(p: str) -> str:
    return f"({p}amount_cents - {p}deducted_cents - {p}undeducted_cents)"


def below(p: str) -> str:
    """models.rules.below_warning in SQL: the level is amount × percent / 100 rounded half up (integer division)."""
    return f"({p}warning_percent IS NOT NULL AND {available(p)} < ({p}amount_cents * {p}warning_percent + 50) / 100)"


def listing_select(a: str, source: str) -> str:
    """The listing row of account `a` (a table alias, or NEW in a SQLite trigger) with its pool `p` and master `m`."""
    return (
        f"SELECT {a}.id, {a}.partner_id, {a}.pool_id, {a}.master_id, {a}.uid, {a}.account_type, {a}.status, "
        f"{a}.linked_at, "
        f"coalesce({a}.nickname, ''), {available('p.')}, p.amount_cents, p.credit_control_status, "
        f"p.credit_control_status = 'SHUTDOWN', {below('p.')}, "
        f"({a}.payg_freeze = 'FROZEN' OR coalesce(m.payg_freeze = 'FROZEN', FALSE)), "
        f"({a}.purchase_control = 'BANNED' OR coalesce(m.purchase_control = 'BANNED', FALSE)) "
        f"FROM {source} JOIN quota_pools p ON p.id = {a}.pool_id LEFT JOIN accounts m ON m.id = {a}.master_id"
    )


def contributions(r: str) -> list[str]:
    """What one listing row `r` adds to each counter (COUNTER_COLUMNS order); models Summary semantics exactly:
    non-deleted accounts; money over pool owners (master_id IS NULL) only."""
    live = f"{r}.status <> 'DELETED'"
    owner = f"{live} AND {r}.master_id IS NULL"

    def flag(cond: str) -> str:
        return f"CASE WHEN {cond} THEN 1 ELSE 0 END"

    return [
        flag(live),
        flag(owner),
        flag(f"{live} AND {r}.frozen"),
        flag(f"{live} AND {r}.banned"),
        flag(f"{live} AND {r}.shutdown"),
        flag(f"{live} AND {r}.below_warning"),
        f"CASE WHEN {owner} THEN {r}.amount_cents ELSE 0 END",
        f"CASE WHEN {owner} THEN {r}.available_cents ELSE 0 END",
        f"CASE WHEN {owner} AND {r}.available_cents < 0 THEN -{r}.available_cents ELSE 0 END",
    ]


COUNTER_INPUTS = (
    "status",
    "master_id",
    "frozen",
    "banned",
    "shutdown",
    "below_warning",
    "amount_cents",
    "available_cents",
)


# ---------------------------------------------------------------- SQLite


def sqlite_counter_triggers(
    columns: Sequence[str], contribs: Callable[[str], list[str]], inputs: Sequence[str]
) -> list[str]:
    """listing → counters on SQLite (one row per partner): `contribs(row)` is each of `columns`' share of a row,
    and a listing UPDATE moves them only when one of `inputs` changed. Migration 0005 reuses it with more columns."""
    return [
        f"""CREATE TRIGGER trg_listing_counters_insert AFTER INSERT ON account_listing BEGIN
  INSERT INTO partner_account_counters (partner_id, {", ".join(columns)})
    SELECT NEW.partner_id, {", ".join("0" for _ in columns)}
    WHERE NOT EXISTS (SELECT 1 FROM partner_account_counters WHERE partner_id = NEW.partner_id);
  UPDATE partner_account_counters SET {
            ", ".join(f"{c} = {c} + {e}" for c, e in zip(columns, contribs("NEW"), strict=True))
        }
  WHERE partner_id = NEW.partner_id;
END""",
        f"""CREATE TRIGGER trg_listing_counters_update AFTER UPDATE ON account_listing
WHEN {" OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in inputs)}
BEGIN
  UPDATE partner_account_counters SET {
            ", ".join(
                f"{c} = {c} + ({n}) - ({o})" for c, n, o in zip(columns, contribs("NEW"), contribs("OLD"), strict=True)
            )
        }
  WHERE partner_id = NEW.partner_id;
END""",
        f"""CREATE TRIGGER trg_listing_counters_delete AFTER DELETE ON account_listing BEGIN
  UPDATE partner_account_counters SET {
            ", ".join(f"{c} = {c} - ({e})" for c, e in zip(columns, contribs("OLD"), strict=True))
        }
  WHERE partner_id = OLD.partner_id;
END""",
    ]


SQLITE_TRIGGERS = [
    # accounts → listing
    f"""CREATE TRIGGER trg_accounts_listing_insert AFTER INSERT ON accounts BEGIN
  INSERT INTO account_listing ({LISTING_COLUMNS}) {listing_select("NEW", "(SELECT 1)")};
END""",
    """CREATE TRIGGER trg_accounts_listing_update AFTER UPDATE ON accounts BEGIN
  UPDATE account_listing SET master_id = NEW.master_id, uid = NEW.uid, account_type = NEW.account_type,
    status = NEW.status,
    linked_at = NEW.linked_at, nickname_key = coalesce(NEW.nickname, ''),
    frozen = (NEW.payg_freeze = 'FROZEN'
              OR coalesce((SELECT m.payg_freeze = 'FROZEN' FROM accounts m WHERE m.id = NEW.master_id), FALSE)),
    banned = (NEW.purchase_control = 'BANNED'
              OR coalesce((SELECT m.purchase_control = 'BANNED' FROM accounts m WHERE m.id = NEW.master_id), FALSE))
  WHERE account_id = NEW.id;
END""",
    """CREATE TRIGGER trg_accounts_listing_cascade AFTER UPDATE ON accounts
WHEN NEW.master_id IS NULL
  AND (OLD.payg_freeze IS NOT NEW.payg_freeze OR OLD.purchase_control IS NOT NEW.purchase_control)
BEGIN
  UPDATE account_listing SET
    frozen = ((SELECT s.payg_freeze = 'FROZEN' FROM accounts s WHERE s.id = account_listing.account_id)
              OR NEW.payg_freeze = 'FROZEN'),
    banned = ((SELECT s.purchase_control = 'BANNED' FROM accounts s WHERE s.id = account_listing.account_id)
              OR NEW.purchase_control = 'BANNED')
  WHERE account_id IN (SELECT s.id FROM accounts s WHERE s.master_id = NEW.id);
END""",
    # quota_pools → the listing rows of the pool
    f"""CREATE TRIGGER trg_pools_listing_update AFTER UPDATE ON quota_pools
WHEN OLD.amount_cents IS NOT NEW.amount_cents OR OLD.deducted_cents IS NOT NEW.deducted_cents
  OR OLD.undeducted_cents IS NOT NEW.undeducted_cents OR OLD.warning_percent IS NOT NEW.warning_percent
  OR OLD.credit_control_status IS NOT NEW.credit_control_status
BEGIN
  UPDATE account_listing SET available_cents = {available("NEW.")}, amount_cents = NEW.amount_cents,
    credit_control_status = NEW.credit_control_status, shutdown = NEW.credit_control_status = 'SHUTDOWN',
    below_warning = {below("NEW.")}
  WHERE pool_id = NEW.id;
END""",
    # listing → counters (one row per partner)
    *sqlite_counter_triggers(COUNTER_COLUMNS, contributions, COUNTER_INPUTS),
    # accounts → the FTS5 trigram index (external content: the old values must be given to delete)
    """CREATE TRIGGER trg_accounts_search_insert AFTER INSERT ON accounts BEGIN
  INSERT INTO account_search (rowid, uid, nickname, remarks) VALUES (NEW.id, NEW.uid, NEW.nickname, NEW.remarks);
END""",
    """CREATE TRIGGER trg_accounts_search_update AFTER UPDATE ON accounts
WHEN OLD.uid IS NOT NEW.uid OR OLD.nickname IS NOT NEW.nickname OR OLD.remarks IS NOT NEW.remarks
BEGIN
  INSERT INTO account_search (account_search, rowid, uid, nickname, remarks)
    VALUES ('delete', OLD.id, OLD.uid, OLD.nickname, OLD.remarks);
  INSERT INTO account_search (rowid, uid, nickname, remarks) VALUES (NEW.id, NEW.uid, NEW.nickname, NEW.remarks);
END""",
    """CREATE TRIGGER trg_accounts_search_delete AFTER DELETE ON accounts BEGIN
  INSERT INTO account_search (account_search, rowid, uid, nickname, remarks)
    VALUES ('delete', OLD.id, OLD.uid, OLD.nickname, OLD.remarks);
END""",
]

SQLITE_TRIGGER_NAMES = [
    "trg_accounts_listing_insert",
    "trg_accounts_listing_update",
    "trg_accounts_listing_cascade",
    "trg_pools_listing_update",
    "trg_listing_counters_insert",
    "trg_listing_counters_update",
    "trg_listing_counters_delete",
    "trg_accounts_search_insert",
    "trg_accounts_search_update",
    "trg_accounts_search_delete",
]


# ---------------------------------------------------------------- PostgreSQL


def _pg_counter_insert(rows_sql: str, columns: Sequence[str]) -> str:
    sums = ", ".join(f"sum({c})" for c in columns)
    nonzero = " OR ".join(f"sum({c}) <> 0" for c in columns)
    return (
        f"INSERT INTO partner_account_counters (partner_id, {', '.join(columns)}) "
        f"SELECT partner_id, {sums} FROM ({rows_sql}) d GROUP BY partner_id HAVING {nonzero};"
    )


def _pg_rows(table: str, sign: str, columns: Sequence[str], contribs: Callable[[str], list[str]]) -> str:
    cols = ", ".join(f"{sign}({e}) AS {c}" for c, e in zip(columns, contribs("r"), strict=True))
    return f"SELECT r.partner_id, {cols} FROM {table} r"


def pg_counters_function(columns: Sequence[str], contribs: Callable[[str], list[str]], replace: bool = False) -> str:
    """listing → one delta row of counters per statement (PostgreSQL); migration 0005 reuses it with more columns."""

    def rows(table: str, sign: str) -> str:
        return _pg_rows(table, sign, columns, contribs)

    return f"""CREATE {"OR REPLACE " if replace else ""}FUNCTION uidhub_listing_counters() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_pg_counter_insert(rows("new_rows", "+"), columns)}
  ELSIF TG_OP = 'DELETE' THEN
    {_pg_counter_insert(rows("old_rows", "-"), columns)}
  ELSE
    {_pg_counter_insert(rows("new_rows", "+") + " UNION ALL " + rows("old_rows", "-"), columns)}
  END IF;
  RETURN NULL;
END $$"""


# Statement-level triggers with transition tables: one statement of the application (a multi-row insert of an
# import, a freeze of many accounts) costs one statement here, and one delta row of counters.
PG_FUNCTIONS = [
    f"""CREATE FUNCTION uidhub_accounts_listing_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO account_listing ({LISTING_COLUMNS}) {listing_select("a", "new_rows a")};
  RETURN NULL;
END $$""",
    """CREATE FUNCTION uidhub_accounts_listing_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE account_listing l SET master_id = a.master_id, uid = a.uid, account_type = a.account_type,
    status = a.status, linked_at = a.linked_at,
    nickname_key = coalesce(a.nickname, ''),
    frozen = (a.payg_freeze = 'FROZEN' OR coalesce(m.payg_freeze = 'FROZEN', FALSE)),
    banned = (a.purchase_control = 'BANNED' OR coalesce(m.purchase_control = 'BANNED', FALSE))
  FROM new_rows n JOIN accounts a ON a.id = n.id LEFT JOIN accounts m ON m.id = a.master_id
  WHERE l.account_id = n.id;
  -- Sub-accounts of a master whose freeze or ban changed: their effective values follow it.
  UPDATE account_listing l SET
    frozen = (s.payg_freeze = 'FROZEN' OR m.payg_freeze = 'FROZEN'),
    banned = (s.purchase_control = 'BANNED' OR m.purchase_control = 'BANNED')
  FROM new_rows n JOIN old_rows o ON o.id = n.id
    JOIN accounts m ON m.id = n.id JOIN accounts s ON s.master_id = n.id
  WHERE l.account_id = s.id AND n.master_id IS NULL
    AND (o.payg_freeze IS DISTINCT FROM n.payg_freeze OR o.purchase_control IS DISTINCT FROM n.purchase_control);
  RETURN NULL;
END $$""",
    f"""CREATE FUNCTION uidhub_pools_listing_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE account_listing l SET available_cents = {available("p.")}, amount_cents = p.amount_cents,
    credit_control_status = p.credit_control_status, shutdown = p.credit_control_status = 'SHUTDOWN',
    below_warning = {below("p.")}
  FROM new_rows n JOIN old_rows o ON o.id = n.id JOIN quota_pools p ON p.id = n.id
  WHERE l.pool_id = n.id
    AND (o.amount_cents, o.deducted_cents, o.undeducted_cents, o.warning_percent, o.credit_control_status)
        IS DISTINCT FROM (n.amount_cents, n.deducted_cents, n.undeducted_cents, n.warning_percent,
                          n.credit_control_status);
  RETURN NULL;
END $$""",
    pg_counters_function(COUNTER_COLUMNS, contributions),
]

PG_TRIGGERS = [
    "CREATE TRIGGER trg_accounts_listing_insert AFTER INSERT ON accounts REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION uidhub_accounts_listing_insert()",
    "CREATE TRIGGER trg_accounts_listing_update AFTER UPDATE ON accounts "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION uidhub_accounts_listing_update()",
    "CREATE TRIGGER trg_pools_listing_update AFTER UPDATE ON quota_pools "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION uidhub_pools_listing_update()",
    "CREATE TRIGGER trg_listing_counters_insert AFTER INSERT ON account_listing REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION uidhub_listing_counters()",
    "CREATE TRIGGER trg_listing_counters_update AFTER UPDATE ON account_listing "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION uidhub_listing_counters()",
    "CREATE TRIGGER trg_listing_counters_delete AFTER DELETE ON account_listing REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION uidhub_listing_counters()",
]

PG_TRIGGER_TABLES = [
    ("trg_accounts_listing_insert", "accounts"),
    ("trg_accounts_listing_update", "accounts"),
    ("trg_pools_listing_update", "quota_pools"),
    ("trg_listing_counters_insert", "account_listing"),
    ("trg_listing_counters_update", "account_listing"),
    ("trg_listing_counters_delete", "account_listing"),
]
PG_FUNCTION_NAMES = [
    "uidhub_accounts_listing_insert",
    "uidhub_accounts_listing_update",
    "uidhub_pools_listing_update",
    "uidhub_listing_counters",
]


# ---------------------------------------------------------------- backfill (shared)


def backfill_sql(
    columns: Sequence[str] = COUNTER_COLUMNS, contribs: Callable[[str], list[str]] = contributions
) -> list[str]:
    """Fill the listing and the counters from the rows already there (run before the triggers exist)."""
    return [
        f"INSERT INTO account_listing ({LISTING_COLUMNS}) {listing_select('a', 'accounts a')}",
        counters_from_listing(columns, contribs),
    ]


def counters_from_listing(columns: Sequence[str], contribs: Callable[[str], list[str]]) -> str:
    """One counters row per partner, summed from its listing rows."""
    sums = ", ".join(f"sum({e})" for e in contribs("r"))
    return (
        f"INSERT INTO partner_account_counters (partner_id, {', '.join(columns)}) "
        f"SELECT r.partner_id, {sums} FROM account_listing r GROUP BY r.partner_id"
    )


# ---------------------------------------------------------------- upgrade / downgrade


def _create_tables() -> None:
    op.create_table(
        "account_listing",
        sa.Column("account_id", BigId, nullable=False),
        sa.Column("partner_id", BigId, nullable=False),
        sa.Column("pool_id", BigId, nullable=False),
        sa.Column("master_id", BigId, nullable=True),
        sa.Column("uid", sa.String(length=64), nullable=False),
        sa.Column(
            "account_type",
            sa.Enum("END_USER", "ENTERPRISE", "RESELLER", name="accounttype", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "NORMAL",
                "TO_BE_CONFIRMED",
                "IN_PROCESS",
                "TERMINATED",
                "DELETED",
                name="accountstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("nickname_key", sa.String(length=150), nullable=False),
        sa.Column("available_cents", sa.BigInteger(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column(
            "credit_control_status",
            sa.Enum(
                "NORMAL", "ARREARS_NOT_SHUTDOWN", "SHUTDOWN", name="creditcontrolstatus", native_enum=False, length=32
            ),
            nullable=False,
        ),
        sa.Column("shutdown", sa.Boolean(), nullable=False),
        sa.Column("below_warning", sa.Boolean(), nullable=False),
        sa.Column("frozen", sa.Boolean(), nullable=False),
        sa.Column("banned", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_account_listing_account_id_accounts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_account_listing")),
    )
    op.create_table(
        "partner_account_counters",
        sa.Column("id", BigId, nullable=False),
        sa.Column("partner_id", BigId, nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in COUNTER_COLUMNS),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_account_counters")),
    )
    op.create_index("ix_partner_account_counters_partner", "partner_account_counters", ["partner_id"])


def _create_listing_indexes() -> None:
    """Created after the backfill: building an index once is cheaper than maintaining it row by row."""
    from uidhub.models.listing import AccountListing

    bind = op.get_bind()
    table = cast(sa.Table, AccountListing.__table__)  # a Table; the ORM types it as a FromClause
    for index in table.indexes:
        index.create(bind)


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    _create_tables()
    for statement in backfill_sql():
        op.execute(statement)
    _create_listing_indexes()
    if postgres:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for column in ("uid", "nickname", "remarks"):
            op.execute(f"CREATE INDEX ix_accounts_{column}_trgm ON accounts USING gin ({column} gin_trgm_ops)")
        # A UID prefix (each case spelling of it) as a range of this index, whatever the database collation.
        op.execute("CREATE INDEX ix_accounts_uid_pattern ON accounts (uid varchar_pattern_ops)")
        for statement in PG_FUNCTIONS + PG_TRIGGERS:
            op.execute(statement)
    else:
        op.execute(
            "CREATE VIRTUAL TABLE account_search USING fts5(uid, nickname, remarks, content='accounts', "
            "content_rowid='id', tokenize='trigram')"
        )
        op.execute("INSERT INTO account_search (account_search) VALUES ('rebuild')")
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for name, table in PG_TRIGGER_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        for name in PG_FUNCTION_NAMES:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
        for column in ("uid", "nickname", "remarks"):
            op.execute(f"DROP INDEX IF EXISTS ix_accounts_{column}_trgm")
        op.execute("DROP INDEX IF EXISTS ix_accounts_uid_pattern")
    else:
        for name in SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS account_search")
    op.drop_table("partner_account_counters")
    op.drop_table("account_listing")

"""PostgreSQL: a 256 kB pending list for the trigram search indexes (was the server's 4 MB)

Revision ID: 0007_trigram_pending_limit
Revises: 0006_pool_alert_rules
Create Date: 2026-12-02

A GIN index takes new entries into a pending list (`fastupdate`) that every scan of the index reads in
full; the insert that overflows `gin_pending_list_limit` merges it, and so does a vacuum. The trigram
indexes of `accounts` (0004_scale) are shared by every partner, so each search paid for every other
partner's recent links and nickname or remarks edits: up to 4 MB (512 pages) per index between merges, about
15 ms per search at 1,000 pending pages (EXPLAIN ANALYZE on the 1M bench database). With autovacuum on, a
vacuum of `accounts` comes only after inserts of 20% of the table, so at scale the merges are the inserts'.

256 kB bounds what a search reads to 32 pages per index, and what the overflowing insert (a linkAccount, an
updateBasicInfo) merges in line to a sixteenth of before. The import was as fast either way (interleaved
200,000-row imports: 5,504 / 5,779 rows/s with 4 MB, 5,219 / 6,192 with 256 kB), and it merges what it leaves
once it has committed (uidhub.import_accounts.flush_search_pending). SQLite: nothing to do (FTS5).
"""

from __future__ import annotations

from alembic import op

revision = "0007_trigram_pending_limit"
down_revision = "0006_pool_alert_rules"
branch_labels = None
depends_on = None

#: In kB, as the storage parameter is.
PENDING_LIMIT_KB = 256
INDEXES = ("ix_accounts_uid_trgm", "ix_accounts_nickname_trgm", "ix_accounts_remarks_trgm")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in INDEXES:
        # A storage parameter: no rebuild, a brief ShareUpdateExclusive lock.
        op.execute(f"ALTER INDEX IF EXISTS {name} SET (gin_pending_list_limit = {PENDING_LIMIT_KB})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in INDEXES:
        op.execute(f"ALTER INDEX IF EXISTS {name} RESET (gin_pending_list_limit)")

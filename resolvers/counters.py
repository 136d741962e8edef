"""Reading the per-partner counters that the database keeps in step (models.listing, migration 0004_scale).

A partner's totals are the SUM of its `partner_account_counters` rows. On
SQLite there is one row per partner. On PostgreSQL every statement that moves
a total appends a delta row (so that concurrent writers never wait for one hot
row), and a reader that finds more than `COMPACT_AFTER` rows folds them back
into one in a short transaction of its own: the read stays a bounded SUM.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.db import Database, rows_of
from uidhub.models import PartnerAccountCounters
from uidhub.models.enums import AccountStatus, AccountType
from uidhub.models.listing import status_counter, type_counter

C = PartnerAccountCounters
COUNTER_FIELDS = (
    "accounts",
    "owners",
    "frozen",
    "banned",
    "shutdown",
    "below_warning",
    "total_quota_cents",
    "total_available_cents",
    "total_outstanding_cents",
    *(status_counter(s) for s in AccountStatus),
    *(type_counter(t) for t in AccountType),
)
#: Delta rows a PostgreSQL reader tolerates before folding them (the SUM reads at most about this many).
COMPACT_AFTER = 64


@dataclass(frozen=True)
class Totals:
    accounts: int
    owners: int
    frozen: int
    banned: int
    shutdown: int
    below_warning: int
    total_quota_cents: int
    total_available_cents: int
    total_outstanding_cents: int
    status_normal: int
    status_to_be_confirmed: int
    status_in_process: int
    status_terminated: int
    status_deleted: int
    type_end_user: int
    type_enterprise: int
    type_reseller: int


def _compact_sql() -> str:
    cols = ", ".join(COUNTER_FIELDS)
    sums = ", ".join(f"coalesce(sum({c}), 0)" for c in COUNTER_FIELDS)
    return (
        f"WITH d AS (DELETE FROM partner_account_counters WHERE partner_id = :partner_id RETURNING *) "
        f"INSERT INTO partner_account_counters (partner_id, {cols}) "
        f"SELECT :partner_id, {sums} FROM d HAVING count(*) > 0"
    )


async def compact(session: AsyncSession, partner_id: int) -> None:
    """Fold a partner's delta rows into one (PostgreSQL), in a transaction of its own.

    Safe against concurrent writers and compactors: the DELETE takes only the
    rows its snapshot sees (rows committed later stay and are summed next time),
    and a second compactor skips the rows the first one deleted.
    """
    db = Database.of(session)
    if db is None or not db.is_postgres:
        return
    async with db.engine.begin() as conn:
        await conn.execute(text(_compact_sql()), {"partner_id": partner_id})


#: Built once: constructing its 18 SUMs cost more CPU than the indexed read itself (a list's totalCount, the
#: summary), and SQLAlchemy's compiled cache keys on the structure, so only the partner is a parameter.
_TOTALS = select(func.count(), *(func.coalesce(func.sum(getattr(C, f)), 0) for f in COUNTER_FIELDS)).where(
    C.partner_id == bindparam("partner_id")
)


async def totals(session: AsyncSession, partner_id: int) -> Totals:
    """The partner's counters: one indexed SUM over at most ~COMPACT_AFTER rows."""
    (row,) = await rows_of(session, _TOTALS, {"partner_id": partner_id})
    if int(row[0]) > COMPACT_AFTER:
        await compact(session, partner_id)
    return Totals(**{f: int(v) for f, v in zip(COUNTER_FIELDS, row[1:], strict=True)})

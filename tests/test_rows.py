"""models.rows: the list's plain rows read exactly like the mapped entities they stand for."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from uidhub.db import Database
from uidhub.models import Account, Partner, QuotaPool
from uidhub.models.enums import AccountStatus, AccountType, CreditControlStatus, PartnerKind, ShutdownPolicy
from uidhub.models.rows import AccountRow, PoolRow, account_at, account_columns, pool_at, pool_columns


@pytest.mark.parametrize(("row", "table"), [(AccountRow, Account), (PoolRow, QuotaPool)])
def test_fields_are_the_table_columns_in_order(row: type, table: type) -> None:
    # A column added to the table and not to the row would make every list read miss it.
    assert row._fields == tuple(table.__table__.c.keys())  # type: ignore[attr-defined]


def test_columns_select_every_field() -> None:
    assert [c.key for c in account_columns()] == list(AccountRow._fields)
    assert [c.key for c in pool_columns()] == list(PoolRow._fields)


@pytest.mark.parametrize(("amount", "deducted", "undeducted"), [(0, 0, 0), (10_000, 2_500, 1), (100, 300, 50)])
def test_pool_row_available_is_the_entity_rule(amount: int, deducted: int, undeducted: int) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    values = (
        7,
        1,
        amount,
        deducted,
        undeducted,
        True,
        80,
        False,
        ShutdownPolicy.NO_STOP,
        0,
        CreditControlStatus.NORMAL,
        now,
        0,
    )
    entity = QuotaPool(**dict(zip(PoolRow._fields, values, strict=True)))
    assert PoolRow._make(values).available_cents == entity.available_cents == amount - deducted - undeducted


def test_outer_join_nulls_are_no_row() -> None:
    nulls = (None,) * len(AccountRow._fields)
    assert account_at(("x", *nulls), 1) is None
    assert pool_at((None,) * len(PoolRow._fields), 0) is None


async def test_stored_enums_and_timestamps_read_back_as_written(db: Database) -> None:
    """The fast result processors (models.base.StoredEnum, UTCDateTime on asyncpg) give the members and aware UTC
    datetimes the stock ones gave, on both databases; a name the enum does not know still raises."""
    written = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
    async with db.session(write=True) as session:
        partner = Partner(uid="P-ROWS", name="rows", kind=PartnerKind.RESELLER)
        session.add(partner)
        await session.flush()
        for status in AccountStatus:
            pool = QuotaPool(partner_id=partner.id)
            session.add(pool)
            await session.flush()
            session.add(
                Account(
                    partner_id=partner.id,
                    uid=f"rows-{status.value}",
                    account_type=AccountType.END_USER,
                    pool_id=pool.id,
                    status=status,
                    linked_at=written,
                )
            )
        await session.commit()
    async with db.read() as session:
        rows = (
            await session.execute(
                select(Account.status, Account.linked_at, Account.master_id).where(Account.partner_id == partner.id)
            )
        ).all()
        assert sorted(status for status, _, _ in rows) == sorted(AccountStatus)
        for status, linked_at, master_id in rows:
            assert type(status) is AccountStatus
            assert linked_at == written and linked_at.tzinfo is UTC
            assert master_id is None
        # Past the bind-side validation, as a row written by another program would be.
        await session.execute(text("UPDATE accounts SET status = 'NO_SUCH' WHERE uid = 'rows-NORMAL'"))
        with pytest.raises(LookupError):
            await session.execute(select(Account.status).where(Account.uid == "rows-NORMAL"))

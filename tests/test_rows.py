"""models.rows: the list's plain rows read exactly like the mapped entities they stand for."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from uidhub.models import Account, QuotaPool
from uidhub.models.enums import CreditControlStatus, ShutdownPolicy
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
    )
    entity = QuotaPool(**dict(zip(PoolRow._fields, values, strict=True)))
    assert PoolRow._make(values).available_cents == entity.available_cents == amount - deducted - undeducted


def test_outer_join_nulls_are_no_row() -> None:
    nulls = (None,) * len(AccountRow._fields)
    assert account_at(("x", *nulls), 1) is None
    assert pool_at((None,) * len(PoolRow._fields), 0) is None

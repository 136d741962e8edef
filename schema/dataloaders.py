"""Per-request DataLoaders: nested fields of a list cost one query per field, not one per row."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import BigInteger, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from uidhub.db import rows_of
from uidhub.models import (
    Account,
    AuditEntry,
    CreditAlert,
    Instance,
    LedgerEntry,
    Partner,
    QuotaAdjustment,
    QuotaPool,
    QuotaThreshold,
    TemporaryCredit,
)
from uidhub.models.enums import AuditAction, QuotaOperationType, TemporaryCreditStatus
from uidhub.models.rows import AccountLike, AccountRow, PoolLike, account_columns
from uidhub.resolvers.crossing import SPEND_KINDS  # the forecast's spend, shared with RUNS_OUT_WITHIN_DAYS thresholds
from uidhub.resolvers.quota import adjustment_conditions

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

SessionGetter = Callable[[], Any]


def _by_key(model: Any, column: Any, session_getter: SessionGetter) -> DataLoader[Any, Any]:
    async def load(keys: Sequence[Any]) -> list[Any]:
        session: AsyncSession = await session_getter()
        rows = (await session.scalars(select(model).where(column.in_(list(keys))))).all()
        found = {getattr(row, column.key): row for row in rows}
        return [found.get(k) for k in keys]

    return DataLoader(load_fn=load)


@functools.cache
def _sub_accounts_query(postgres: bool, reads: frozenset[str] | None) -> Any:
    """A page's sub-accounts, built once per shape. PostgreSQL takes the masters as one array parameter: an IN
    list is rendered anew for every page size, one cast bind parameter per master."""
    query = select(*account_columns(Account, reads)).order_by(Account.uid)
    if postgres:
        return query.where(Account.master_id == any_(bindparam("masters", type_=ARRAY(BigInteger))))
    return query.where(Account.master_id.in_(bindparam("masters", expanding=True)))


async def sub_account_rows(
    session: AsyncSession, masters: Sequence[int], reads: frozenset[str] | None = None
) -> list[list[AccountRow]]:
    """The sub-accounts of each of `masters`, by UID, as plain rows (models.rows), in one statement.

    `reads` narrows the rows as `account_columns` does (the compiled read path's row plans); the loader
    below reads whole rows.
    """
    query = _sub_accounts_query(session.get_bind().dialect.name == "postgresql", reads)
    grouped: dict[int | None, list[AccountRow]] = defaultdict(list)
    for values in await rows_of(session, query, {"masters": list(masters)}):
        row = AccountRow._make(values)
        grouped[row.master_id].append(row)
    return [grouped.get(k, []) for k in masters]


def _sub_account_rows(session_getter: SessionGetter) -> DataLoader[int, list[AccountRow]]:
    """A master's sub-accounts by UID, as plain rows (models.rows): one query for every master of a list."""

    async def load(keys: Sequence[int]) -> list[list[AccountRow]]:
        return await sub_account_rows(await session_getter(), keys)

    return DataLoader(load_fn=load)


def _grouped(
    model: Any, column: Any, session_getter: SessionGetter, order: Any, *where: Any
) -> DataLoader[Any, list[Any]]:
    async def load(keys: Sequence[Any]) -> list[list[Any]]:
        session: AsyncSession = await session_getter()
        orders = order if isinstance(order, list | tuple) else [order]
        query = select(model).where(column.in_(list(keys)), *where).order_by(*orders)
        rows = (await session.scalars(query)).all()
        grouped: dict[Any, list[Any]] = defaultdict(list)
        for row in rows:
            grouped[getattr(row, column.key)].append(row)
        return [grouped.get(k, []) for k in keys]

    return DataLoader(load_fn=load)


#: (group id, first, after id, filter shape): a nested connection's page request.
PageKey = tuple[int, int, int | None, Hashable]
PageResult = tuple[list[Any], int]


def _newest_pages(
    model: Any, group: Any, where: Callable[[Any], list[Any]], session_getter: SessionGetter
) -> DataLoader[PageKey, PageResult]:
    """Top-N newest rows per group in one windowed query, plus one grouped COUNT, per request shape.

    Serves nested connections under lists (an account's audit entries, a
    pool's quota records): a page of 100 accounts costs two statements, not
    two hundred. `where(shape)` turns the filter part of the key into conditions.
    """

    async def load(keys: Sequence[PageKey]) -> list[PageResult]:
        session: AsyncSession = await session_getter()
        results: dict[PageKey, PageResult] = {}
        shapes: dict[tuple[int, int | None, Hashable], list[int]] = defaultdict(list)
        for group_id, first, after_id, shape in keys:
            shapes[(first, after_id, shape)].append(group_id)
        for (first, after_id, shape), group_ids in shapes.items():
            conditions = [group.in_(group_ids), *where(shape)]
            counted = await session.execute(select(group, func.count()).where(*conditions).group_by(group))
            counts: dict[Any, int] = {key: int(n) for key, n in counted.all()}
            if after_id is not None:
                conditions.append(model.id < after_id)
            ranked = (
                select(model.id, func.row_number().over(partition_by=group, order_by=model.id.desc()).label("rank"))
                .where(*conditions)
                .subquery()
            )
            rows = (
                await session.scalars(
                    select(model)
                    .join(ranked, ranked.c.id == model.id)
                    .where(ranked.c.rank <= first + 1)
                    .order_by(model.id.desc())
                )
            ).all()
            grouped: dict[int, list[Any]] = defaultdict(list)
            for row in rows:
                grouped[getattr(row, group.key)].append(row)
            for group_id in group_ids:
                results[(group_id, first, after_id, shape)] = (grouped.get(group_id, []), counts.get(group_id, 0))
        return [results[k] for k in keys]

    return DataLoader(load_fn=load)


def _audit_where(actions: tuple[AuditAction, ...]) -> list[Any]:
    return [AuditEntry.action.in_(list(actions))] if actions else []


def _adjustment_where(shape: tuple[datetime | None, datetime | None, QuotaOperationType | None]) -> list[Any]:
    return adjustment_conditions(*shape)


def _recent_spend(session_getter: SessionGetter) -> DataLoader[tuple[int, int], tuple[int, datetime]]:
    """(pool id, basis days) → (cents spent in the window, the window's end): one grouped SUM per request shape."""

    async def load(keys: Sequence[tuple[int, int]]) -> list[tuple[int, datetime]]:
        session: AsyncSession = await session_getter()
        now = datetime.now(UTC)
        by_days: dict[int, list[int]] = defaultdict(list)
        for pool_id, days in keys:
            by_days[days].append(pool_id)
        sums: dict[tuple[int, int], int] = {}
        for days, pool_ids in by_days.items():
            rows = await session.execute(
                select(LedgerEntry.pool_id, func.sum(LedgerEntry.amount_cents))
                .where(
                    LedgerEntry.pool_id.in_(pool_ids),
                    LedgerEntry.kind.in_(SPEND_KINDS),
                    LedgerEntry.occurred_at >= now - timedelta(days=days),
                    LedgerEntry.occurred_at <= now,
                )
                .group_by(LedgerEntry.pool_id)
            )
            for pool_id, total in rows.all():
                sums[(pool_id, days)] = int(total or 0)
        return [(sums.get(key, 0), now) for key in keys]

    return DataLoader(load_fn=load)


_MISSING: Any = object()


def peek(loader: DataLoader[Any, Any], key: Any) -> Any:
    """The value a loader already holds for `key` (primed or loaded), or `MISSING` without scheduling a load.

    Lets a resolver answer synchronously from rows the list query fetched
    anyway, instead of costing an asyncio task per field per row.
    """
    future = loader.cache_map.get(key)
    if future is None or not future.done() or future.cancelled() or future.exception() is not None:
        return _MISSING
    return future.result()


MISSING = _MISSING


class ScopedAccounts:
    """The account loader seen through one viewer's scope: an account outside it loads as None.

    The one way a resolver turns an account id into a row it may show. The
    rows themselves come from `Loaders.account_row`, which is unscoped so that
    a feed batch can share it between subscribers of different scopes; the
    scope (`Actor.sees`) is applied here, per viewer, on every read.
    """

    def __init__(self, rows: DataLoader[int, AccountLike | None], sees: Callable[[AccountLike | None], bool]) -> None:
        self._rows = rows
        self._sees = sees

    def peek(self, account_id: int) -> Any:
        """The row if already loaded (None when out of scope), or `MISSING` without scheduling a load."""
        row = peek(self._rows, account_id)
        if row is _MISSING:
            return _MISSING
        return row if self._sees(row) else None

    async def load(self, account_id: int) -> AccountLike | None:
        row = await self._rows.load(account_id)
        return row if self._sees(row) else None


#: The loaders' orders and conditions, built once: every request creates its Loaders, and building these
#: SQL expressions cost more than the rest of the constructor.
_INSTANCE_ORDER = Instance.id.desc()
_CREDIT_ORDER = [TemporaryCredit.ends_at, TemporaryCredit.id]
_CREDIT_ACTIVE = TemporaryCredit.status == TemporaryCreditStatus.ACTIVE


class Loaders:
    """Created per request (and per subscription event); cleared after a mutation commits."""

    def __init__(self, session_getter: SessionGetter) -> None:
        #: Unscoped rows, for what the server computes itself (a sub-account's effective
        #: status reads its master). Never show one: resolvers read `Context.accounts`.
        self.account_row = _by_key(Account, Account.id, session_getter)
        self.partner = _by_key(Partner, Partner.id, session_getter)
        self.pool = _by_key(QuotaPool, QuotaPool.id, session_getter)
        self.credit_alert = _by_key(CreditAlert, CreditAlert.account_id, session_getter)
        self.sub_accounts = _sub_account_rows(session_getter)
        self.instances = _grouped(Instance, Instance.account_id, session_getter, _INSTANCE_ORDER)
        self.audit_page = _newest_pages(AuditEntry, AuditEntry.account_id, _audit_where, session_getter)
        self.adjustment_page = _newest_pages(
            QuotaAdjustment, QuotaAdjustment.pool_id, _adjustment_where, session_getter
        )
        self.recent_spend = _recent_spend(session_getter)
        #: A pool's ACTIVE temporary credits, soonest end first (Quota.temporaryCredits).
        self.temporary_credits = _grouped(
            TemporaryCredit, TemporaryCredit.pool_id, session_getter, _CREDIT_ORDER, _CREDIT_ACTIVE
        )
        #: A pool's alert thresholds: one query for every pool of a list.
        self.thresholds = _grouped(QuotaThreshold, QuotaThreshold.pool_id, session_getter, QuotaThreshold.id)

    def prime_accounts(self, accounts: Sequence[AccountLike]) -> None:
        for account in accounts:
            self.account_row.prime(account.id, account)

    def prime_related(self, pools: Sequence[PoolLike], masters: Sequence[AccountLike | None]) -> None:
        """Rows a list query joined anyway: pools and masters, for synchronous nested fields."""
        for pool in pools:
            self.pool.prime(pool.id, pool)
        for master in masters:
            if master is not None:
                self.account_row.prime(master.id, master)

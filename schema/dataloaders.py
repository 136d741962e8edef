"""Per-request DataLoaders: nested fields of a list cost one query per field, not one per row."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from models import Account, AuditEntry, CreditAlert, Instance, Partner, QuotaPool
from models.enums import AuditAction

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


def _grouped(model: Any, column: Any, session_getter: SessionGetter, order: Any) -> DataLoader[Any, list[Any]]:
    async def load(keys: Sequence[Any]) -> list[list[Any]]:
        session: AsyncSession = await session_getter()
        rows = (await session.scalars(select(model).where(column.in_(list(keys))).order_by(order))).all()
        grouped: dict[Any, list[Any]] = defaultdict(list)
        for row in rows:
            grouped[getattr(row, column.key)].append(row)
        return [grouped.get(k, []) for k in keys]

    return DataLoader(load_fn=load)


AuditKey = tuple[int, int, int | None, tuple[AuditAction, ...]]


def _audit_pages(session_getter: SessionGetter) -> DataLoader[AuditKey, tuple[list[AuditEntry], int]]:
    """Top-N newest audit entries per account in one windowed query, plus one grouped COUNT."""

    async def load(keys: Sequence[AuditKey]) -> list[tuple[list[AuditEntry], int]]:
        session: AsyncSession = await session_getter()
        results: dict[AuditKey, tuple[list[AuditEntry], int]] = {}
        # Keys that share (first, after, actions) are fetched together.
        shapes: dict[tuple[int, int | None, tuple[AuditAction, ...]], list[int]] = defaultdict(list)
        for account_id, first, after_id, actions in keys:
            shapes[(first, after_id, actions)].append(account_id)
        for (first, after_id, actions), account_ids in shapes.items():
            conditions = [AuditEntry.account_id.in_(account_ids)]
            if actions:
                conditions.append(AuditEntry.action.in_(list(actions)))
            counts = dict(
                (
                    await session.execute(
                        select(AuditEntry.account_id, func.count()).where(*conditions).group_by(AuditEntry.account_id)
                    )
                ).all()
            )
            if after_id is not None:
                conditions.append(AuditEntry.id < after_id)
            ranked = (
                select(
                    AuditEntry.id,
                    func.row_number()
                    .over(partition_by=AuditEntry.account_id, order_by=AuditEntry.id.desc())
                    .label("rank"),
                )
                .where(*conditions)
                .subquery()
            )
            rows = (
                await session.scalars(
                    select(AuditEntry)
                    .join(ranked, ranked.c.id == AuditEntry.id)
                    .where(ranked.c.rank <= first + 1)
                    .order_by(AuditEntry.id.desc())
                )
            ).all()
            grouped: dict[int, list[AuditEntry]] = defaultdict(list)
            for row in rows:
                grouped[row.account_id].append(row)
            for account_id in account_ids:
                results[(account_id, first, after_id, actions)] = (
                    grouped.get(account_id, []),
                    counts.get(account_id, 0),
                )
        return [results[k] for k in keys]

    return DataLoader(load_fn=load)


class Loaders:
    """Created per request (and per subscription event); cleared after a mutation commits."""

    def __init__(self, session_getter: SessionGetter) -> None:
        self.account = _by_key(Account, Account.id, session_getter)
        self.partner = _by_key(Partner, Partner.id, session_getter)
        self.pool = _by_key(QuotaPool, QuotaPool.id, session_getter)
        self.credit_alert = _by_key(CreditAlert, CreditAlert.account_id, session_getter)
        self.sub_accounts = _grouped(Account, Account.master_id, session_getter, Account.uid)
        self.instances = _grouped(Instance, Instance.account_id, session_getter, Instance.id.desc())
        self.audit_page = _audit_pages(session_getter)

    def prime_accounts(self, accounts: Sequence[Account]) -> None:
        for account in accounts:
            self.account.prime(account.id, account)

"""Locking a quota pool and what must follow every change to one.

Every operation that changes a pool (quota set, consumption, deduction,
repayment, subscription order, policy change) locks the pool row first with
`lock_pool` and calls `after_pool_change` before committing, so that credit
control and threshold alerts are evaluated in the same transaction against
the state the pool is now in.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models import QuotaPool
from resolvers.actor import Actor


async def lock_pool(session: AsyncSession, pool_id: int) -> QuotaPool:
    """The pool row, locked until commit (FOR UPDATE on PostgreSQL; SQLite holds the write lock)."""
    pool = await session.scalar(
        select(QuotaPool).where(QuotaPool.id == pool_id).with_for_update().execution_options(populate_existing=True)
    )
    assert pool is not None, "every account has a pool"
    return pool


async def after_pool_change(session: AsyncSession, pool: QuotaPool, actor: Actor | None) -> None:
    """Re-evaluate credit control and thresholds for `pool` in this transaction."""
    from resolvers import alerts, policy  # the rules of later layers, kept out of import cycles

    await policy.recompute_credit_control(session, pool)
    await alerts.evaluate_pool(session, pool)

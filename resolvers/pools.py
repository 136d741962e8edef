"""Locking a quota pool and what must follow every change to one.

Every operation that changes a pool (quota set, consumption, deduction,
repayment, subscription order, policy change) locks the pool row first with
`lock_pool` and calls `after_pool_change` before committing, so that credit
control and threshold alerts are evaluated in the same transaction against
the state the pool is now in. The pool is step 4 of the lock order of
`resolvers.locks`: after the account rows, before the log.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import QuotaPool
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.cascade import recompute_credit_control
from uidhub.resolvers.crossing import evaluate_pool
from uidhub.resolvers.locks import lock_pool

__all__ = ["after_pool_change", "lock_pool"]


async def after_pool_change(
    session: AsyncSession, pool: QuotaPool, actor: Actor | None, *, rules_current: bool = False
) -> None:
    """Re-evaluate credit control and thresholds for `pool` in this transaction.

    `rules_current`: `pool` comes from the caller's own UPDATE … RETURNING (see `evaluate_pool`).
    """
    await recompute_credit_control(session, pool)
    await evaluate_pool(session, pool, rules_current=rules_current)

"""Setting a pool's quota amount, and the result every pool operation answers.

Below the operations: linking an account with an initial quota
(resolvers.accounts), setQuotaAmount (resolvers.quota), temporary credit
(resolvers.tempcredit) and the warning threshold (resolvers.thresholds) all
write an amount the same way: the quota record, the audit entry, then the
after-pool-change sequence, in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account, QuotaAdjustment, QuotaPool
from uidhub.models.enums import AuditAction, OperationMethod, QuotaOperationType
from uidhub.models.money import format_money
from uidhub.resolvers import audit
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.pools import after_pool_change, lock_pool

if TYPE_CHECKING:
    pass


async def apply_quota_amount(
    session: AsyncSession, actor: Actor, account: Account, amount_cents: int
) -> tuple[QuotaPool, QuotaAdjustment | None]:
    """Set the pool's amount. The first amount ever set is QUOTA_CREATE; the same amount writes nothing."""
    pool = await lock_pool(session, account.pool_id)
    return pool, await write_quota_amount(session, actor, account, pool, amount_cents)


async def write_quota_amount(
    session: AsyncSession,
    actor: Actor | None,
    account: Account,
    pool: QuotaPool,
    amount_cents: int,
    *,
    reason: str | None = None,
    audit_extra: dict[str, Any] | None = None,
) -> QuotaAdjustment | None:
    """Move the locked `pool`'s amount to `amount_cents`: the quota record, the audit entry, then every control.

    The one place an amount changes (setQuotaAmount, linking with a quota,
    temporary credit grants and reverts), so that each change writes the same
    record and re-evaluates credit control and thresholds. `actor=None` is the
    system (method SYSTEM, no operator); `reason` goes on the record and the
    audit entry, `audit_extra` into the entry's `after`.
    """
    before = pool.amount_cents
    if pool.quota_created and before == amount_cents:
        return None
    operation = QuotaOperationType.QUOTA_ADJUSTMENT if pool.quota_created else QuotaOperationType.QUOTA_CREATE
    pool.amount_cents = amount_cents
    pool.quota_created = True
    record = QuotaAdjustment(
        pool_id=pool.id,
        operation_type=operation,
        before_cents=before,
        value_cents=amount_cents - before,
        after_cents=amount_cents,
        method=actor.method if actor is not None else OperationMethod.SYSTEM,
        reason=reason,
        **(actor.operator_fields() if actor is not None else {}),
    )
    session.add(record)
    audit.record(
        session,
        actor,
        account,
        AuditAction.QUOTA_CREATED if operation is QuotaOperationType.QUOTA_CREATE else AuditAction.QUOTA_ADJUSTED,
        before={"amount": format_money(before)},
        after={"amount": format_money(amount_cents), **(audit_extra or {})},
        reason=reason,
    )
    await session.flush()
    await after_pool_change(session, pool, actor)
    return record


@dataclass
class PoolResult:
    """What a quota mutation returns: the pool as it is after the change, and the account owning it.

    On an idempotent repeat `pool` is a detached snapshot rebuilt from the
    stored first result, so the repeat answers exactly what the first call did.
    """

    pool: QuotaPool
    owner_id: int


#: The stored result's keys that come from the pool, and the QuotaPool column each holds. One list for
#: `snapshot` and for PostgreSQL's one-statement balance change, which builds the same object in SQL.
SNAPSHOT_POOL_COLUMNS = {
    "poolId": "id",
    "amount": "amount_cents",
    "deducted": "deducted_cents",
    "undeducted": "undeducted_cents",
    "warningPercent": "warning_percent",
}
#: The stored result's key for the account that owns the pool (the master of a trusteeship).
SNAPSHOT_OWNER_KEY = "ownerId"


def snapshot(result: PoolResult) -> dict[str, Any]:
    """The stored first result of a keyed operation: enough to rebuild its payload."""
    data: dict[str, Any] = {key: getattr(result.pool, column) for key, column in SNAPSHOT_POOL_COLUMNS.items()}
    data[SNAPSHOT_OWNER_KEY] = result.owner_id
    return data


def from_snapshot(data: dict[str, Any]) -> PoolResult:
    pool = QuotaPool(
        id=data["poolId"],
        amount_cents=data["amount"],
        deducted_cents=data["deducted"],
        undeducted_cents=data["undeducted"],
        warning_percent=data["warningPercent"],
    )
    return PoolResult(pool=pool, owner_id=data["ownerId"])

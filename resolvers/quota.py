"""The quota pool: setting the credit line, and its history."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Account, QuotaAdjustment, QuotaPool
from models.base import utcnow
from models.enums import AuditAction, QuotaOperationType
from models.money import format_money
from resolvers import audit
from resolvers.actor import Actor
from resolvers.pagination import Page, check_first, decode_id_cursor, encode_cursor
from resolvers.pools import after_pool_change, lock_pool


async def apply_quota_amount(
    session: AsyncSession, actor: Actor, account: Account, amount_cents: int
) -> tuple[QuotaPool, QuotaAdjustment | None]:
    """Set the pool's amount. The first amount ever set is QUOTA_CREATE; the same amount writes nothing."""
    pool = await lock_pool(session, account.pool_id)
    before = pool.amount_cents
    if pool.quota_created and before == amount_cents:
        return pool, None
    operation = QuotaOperationType.QUOTA_ADJUSTMENT if pool.quota_created else QuotaOperationType.QUOTA_CREATE
    pool.amount_cents = amount_cents
    pool.quota_created = True
    record = QuotaAdjustment(
        pool_id=pool.id,
        operation_type=operation,
        before_cents=before,
        value_cents=amount_cents - before,
        after_cents=amount_cents,
        method=actor.method,
        **actor.operator_fields(),
    )
    session.add(record)
    audit.record(
        session,
        actor,
        account,
        AuditAction.QUOTA_CREATED if operation is QuotaOperationType.QUOTA_CREATE else AuditAction.QUOTA_ADJUSTED,
        before={"amount": format_money(before)},
        after={"amount": format_money(amount_cents)},
    )
    await session.flush()
    await after_pool_change(session, pool, actor)
    return pool, record


SIX_MONTHS = timedelta(days=183)
ADJUSTMENT_CURSOR = "qa"


async def list_adjustments(
    session: AsyncSession,
    pool_id: int,
    *,
    first: int | None,
    after: str | None,
    since: datetime | None,
    until: datetime | None,
    operation_type: QuotaOperationType | None,
) -> Page[QuotaAdjustment]:
    """One pool's records, newest first; `since` defaults to six months before now."""
    limit = check_first(first)
    after_id = decode_id_cursor(after, ADJUSTMENT_CURSOR)
    conditions = [
        QuotaAdjustment.pool_id == pool_id,
        QuotaAdjustment.occurred_at >= (since if since is not None else utcnow() - SIX_MONTHS),
    ]
    if until is not None:
        conditions.append(QuotaAdjustment.occurred_at < until)
    if operation_type is not None:
        conditions.append(QuotaAdjustment.operation_type == operation_type)
    page_conditions = [*conditions, QuotaAdjustment.id < after_id] if after_id is not None else conditions
    rows = list(
        (
            await session.scalars(
                select(QuotaAdjustment)
                .where(*page_conditions)
                .order_by(QuotaAdjustment.id.desc())
                .limit(limit + 1)
            )
        ).all()
    )

    async def count() -> int:
        return int(await session.scalar(select(func.count()).select_from(QuotaAdjustment).where(*conditions)) or 0)

    return Page(
        items=rows[:limit],
        cursors=[encode_cursor(ADJUSTMENT_CURSOR, [r.id]) for r in rows[:limit]],
        has_next=len(rows) > limit,
        has_previous=after_id is not None,
        count=count,
    )

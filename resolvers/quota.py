"""The quota pool: setting the credit line, and its history."""

from __future__ import annotations

import functools
import typing
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Table, Text, bindparam, cast, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account, IdempotencyRecord, LedgerEntry, QuotaAdjustment, QuotaPool
from uidhub.models.base import utcnow
from uidhub.models.enums import AuditAction, ErrorCode, LedgerKind, QuotaOperationType
from uidhub.models.money import format_money
from uidhub.resolvers import accounts, audit, idempotency, thresholds
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.errors import UserErrors, invalid
from uidhub.resolvers.pool_amounts import (
    SNAPSHOT_OWNER_KEY,
    SNAPSHOT_POOL_COLUMNS,
    PoolResult,
    apply_quota_amount,
    from_snapshot,
    snapshot,
)
from uidhub.resolvers.pools import after_pool_change, lock_pool

if TYPE_CHECKING:
    from uidhub.db import Database
    from uidhub.settings import Settings


SIX_MONTHS = timedelta(days=183)
ADJUSTMENT_CURSOR = "qa"


def adjustment_conditions(
    since: datetime | None, until: datetime | None, operation_type: QuotaOperationType | None
) -> list[Any]:
    """The window and kind filters of a pool's records; `since` defaults to six months before now."""
    conditions: list[Any] = [QuotaAdjustment.occurred_at >= (since if since is not None else utcnow() - SIX_MONTHS)]
    if until is not None:
        conditions.append(QuotaAdjustment.occurred_at < until)
    if operation_type is not None:
        conditions.append(QuotaAdjustment.operation_type == operation_type)
    return conditions


# ---------------------------------------------------------------- mutations


def _owner_id(account: Account) -> int:
    return account.master_id or account.id


def _check_positive(amount_cents: int) -> None:
    if amount_cents <= 0:
        raise invalid("amount must be greater than zero.", "input", "amount")


async def set_quota_amount(
    session: AsyncSession, actor: Actor, uid: str, amount_cents: int, idempotency_key: str | None
) -> PoolResult:
    """`setQuotaAmount`: QUOTA_CREATE / QUOTA_ADJUSTMENT / nothing for the same amount."""
    actor.require(Permission.QUOTA)
    if amount_cents < 0:
        raise invalid("amount must not be negative.", "input", "amount")
    claim_ = None
    if idempotency_key is not None:
        claim_ = await idempotency.claim(
            session,
            actor,
            idempotency_key,
            "setQuotaAmount",
            {"uid": uid, "amount": amount_cents},
            "input",
            "idempotencyKey",
        )
        if claim_.replay is not None:
            return from_snapshot(claim_.replay)
    # Lock order (resolvers.locks): the key, the account (read to decide: FOR SHARE), the pool.
    account = await accounts.get(session, actor, uid, "input", "uid", share=True)
    if account.master_id is not None:
        raise UserErrors.one(
            ErrorCode.QUOTA_MANAGED_BY_MASTER,
            f"{uid} is a sub-account: it spends from its master's quota; set the quota on the master.",
            "input",
            "uid",
        )
    accounts.require_active(account, "input", "uid")
    pool, _record = await apply_quota_amount(session, actor, account, amount_cents)
    result = PoolResult(pool=pool, owner_id=account.id)
    if claim_ is not None:
        await idempotency.complete(session, claim_, snapshot(result))
    return result


async def set_warning_threshold(session: AsyncSession, actor: Actor, uid: str, percent: int | None) -> PoolResult:
    """`setWarningThreshold`: 1..100, or None to remove the warning; re-evaluates the alert at once."""
    actor.require(Permission.QUOTA)
    if percent is not None and not 1 <= percent <= 100:
        raise invalid("percent must be between 1 and 100, or null to remove the warning.", "input", "percent")
    account = await accounts.get(session, actor, uid, "input", "uid", share=True)
    if account.master_id is not None:
        raise UserErrors.one(
            ErrorCode.QUOTA_MANAGED_BY_MASTER,
            f"{uid} is a sub-account: its warning threshold is its master's; set it on the master.",
            "input",
            "uid",
        )
    accounts.require_active(account, "input", "uid")

    pool = await lock_pool(session, account.pool_id)
    before = pool.warning_percent
    if before != percent:
        # The warning is the pool's first PERCENT_OF_QUOTA threshold; warning_percent mirrors it.
        await thresholds.set_warning(session, pool, percent)
        audit.record(
            session,
            actor,
            account,
            AuditAction.WARNING_THRESHOLD_CHANGED,
            before={"warningThresholdPercent": before},
            after={"warningThresholdPercent": percent},
        )
        await session.flush()
        await after_pool_change(session, pool, actor)
    return PoolResult(pool=pool, owner_id=account.id)


class BalanceOp(Enum):
    """The three balance operations: how each moves the pool's money and what it may not do."""

    RECORD = ("recordConsumption", LedgerKind.CONSUMPTION, Permission.CONSUMPTION)
    DEDUCT = ("deductConsumption", LedgerKind.DEDUCTION, Permission.CONSUMPTION)
    REPAY = ("repayOutstanding", LedgerKind.REPAYMENT, Permission.REPAY)

    def __init__(self, operation: str, kind: LedgerKind, permission: Permission) -> None:
        self.operation = operation
        self.kind = kind
        self.permission = permission


def _table(model: type[Any]) -> Table:
    return typing.cast(Table, model.__table__)  # a Table; the ORM types it as a FromClause


def balance_update_core(op: BalanceOp, pool_id: Any, d: Any, now: Any) -> Any:
    """One atomic UPDATE of the pool; the guard sits in the WHERE clause so no race can go below zero.

    The values may be bind parameters: `_one_statement` builds it once per operation.
    """
    pools = _table(QuotaPool)
    # updated_at set here: inside a CTE the column's onupdate default is not filled in.
    stmt = update(pools).where(pools.c.id == pool_id).values(updated_at=now)
    if op is BalanceOp.RECORD:
        return stmt.values(undeducted_cents=pools.c.undeducted_cents + d)
    if op is BalanceOp.DEDUCT:
        return stmt.where(pools.c.undeducted_cents >= d).values(
            undeducted_cents=pools.c.undeducted_cents - d, deducted_cents=pools.c.deducted_cents + d
        )
    return stmt.where(pools.c.deducted_cents >= d).values(deducted_cents=pools.c.deducted_cents - d)


def balance_update(op: BalanceOp, pool_id: int, d: int) -> Any:
    """One atomic UPDATE … RETURNING the pool (the session's object, refreshed); the guard as in the Core form."""
    stmt = update(QuotaPool).where(QuotaPool.id == pool_id)
    if op is BalanceOp.RECORD:
        stmt = stmt.values(undeducted_cents=QuotaPool.undeducted_cents + d)
    elif op is BalanceOp.DEDUCT:
        stmt = stmt.where(QuotaPool.undeducted_cents >= d).values(
            undeducted_cents=QuotaPool.undeducted_cents - d, deducted_cents=QuotaPool.deducted_cents + d
        )
    else:
        stmt = stmt.where(QuotaPool.deducted_cents >= d).values(deducted_cents=QuotaPool.deducted_cents - d)
    return stmt.returning(QuotaPool).execution_options(populate_existing=True, synchronize_session=False)


async def change_balance(
    session: AsyncSession, actor: Actor, op: BalanceOp, uid: str, amount_cents: int, idempotency_key: str
) -> PoolResult:
    """recordConsumption / deductConsumption / repayOutstanding with idempotency.

    Order: permission, input, key claim (a repeat returns the stored first
    result before anything else is read), account (FOR SHARE), status, the ledger row,
    one atomic UPDATE of the pool (its guard in the WHERE clause), credit
    control and alerts, the stored result.
    """
    actor.require(op.permission)
    _check_positive(amount_cents)
    # The account is read to decide (FOR SHARE): a termination committing meanwhile is seen, not raced. It
    # comes with the key's claim (one statement on PostgreSQL), read only when the key is new.
    claim_ = await idempotency.claim(
        session,
        actor,
        idempotency_key,
        op.operation,
        {"uid": uid, "amount": amount_cents},
        "input",
        "idempotencyKey",
        then=accounts.find_query(actor, uid, share=True),
    )
    if claim_.replay is not None:
        return from_snapshot(claim_.replay)
    account = accounts.found(claim_.found, uid, "input", "uid")
    accounts.require_active(account, "input", "uid")
    owner_id = _owner_id(account)
    if session.get_bind().dialect.name == "postgresql":
        pool = await _change_balance_in_one_statement(
            session, actor, op, account, amount_cents, idempotency_key, claim_, owner_id
        )
    else:
        # The ledger row goes in first: the pool row stays locked from its UPDATE to the commit, so the
        # less that runs after it, the less concurrent writers of the pool wait.
        session.add(
            LedgerEntry(
                pool_id=account.pool_id,
                account_id=account.id,
                kind=op.kind,
                amount_cents=amount_cents,
                method=actor.method,
                operator_uid=actor.operator_uid,
                idempotency_key=idempotency_key,
            )
        )
        await session.flush()
        pool = (await session.scalars(balance_update(op, account.pool_id, amount_cents))).one_or_none()
        if pool is not None:
            await idempotency.complete(session, claim_, snapshot(PoolResult(pool=pool, owner_id=owner_id)))
    if pool is None:
        current = await session.get(QuotaPool, account.pool_id, populate_existing=True)
        assert current is not None, "every account has a pool"
        if op is BalanceOp.DEDUCT:
            message = (
                f"Cannot deduct {format_money(amount_cents)}: only {format_money(current.undeducted_cents)} "
                "is consumed and not yet deducted."
            )
        else:
            message = (
                f"Cannot repay {format_money(amount_cents)}: only {format_money(current.deducted_cents)} "
                "is consumed and deducted."
            )
        raise invalid(message, "input", "amount")
    if op is BalanceOp.REPAY:
        before_deducted = pool.deducted_cents + amount_cents
        before_available = pool.available_cents - amount_cents
        audit.record(
            session,
            actor,
            account,
            AuditAction.OUTSTANDING_REPAID,
            before={
                "consumedDeducted": format_money(before_deducted),
                "outstandingAmount": format_money(max(0, -before_available)),
            },
            after={
                "consumedDeducted": format_money(pool.deducted_cents),
                "outstandingAmount": format_money(max(0, -pool.available_cents)),
                "repaid": format_money(amount_cents),
            },
        )
    # The pool is the row the UPDATE … RETURNING just gave (populate_existing): its alert rule count is current.
    await after_pool_change(session, pool, actor, rules_current=True)
    return PoolResult(pool=pool, owner_id=owner_id)


@functools.cache
def _one_statement(op: BalanceOp) -> Any:
    """`_change_balance_in_one_statement`'s statement for `op`, built once: every value is a bind parameter.

    Building its CTEs cost more CPU than running them (a few hundred SQLAlchemy constructs per call).
    """
    pools, ledger, keys = _table(QuotaPool), _table(LedgerEntry), _table(IdempotencyRecord)

    def param(name: str, column: Any) -> Any:
        return bindparam(name, type_=column.type)

    changed = (
        balance_update_core(
            op, param("pool_id", pools.c.id), param("d", pools.c.amount_cents), param("now", pools.c.updated_at)
        )
        .returning(*pools.c)
        .cte("changed")
    )
    ledger_row = insert(ledger).from_select(
        ["pool_id", "account_id", "kind", "amount_cents", "occurred_at", "method", "operator_uid", "idempotency_key"],
        select(
            changed.c.id,
            param("account_id", ledger.c.account_id),
            bindparam("kind", op.kind, type_=ledger.c.kind.type),
            param("d_ledger", ledger.c.amount_cents),
            param("now_ledger", ledger.c.occurred_at),
            param("method", ledger.c.method),
            param("operator_uid", ledger.c.operator_uid),
            param("idempotency_key", ledger.c.idempotency_key),
        ),
    )

    def key(name: str) -> Any:
        return cast(literal(name), Text)

    pairs: list[Any] = [key(SNAPSHOT_OWNER_KEY), cast(bindparam("owner_id", type_=BigInteger), BigInteger)]
    for name, column in SNAPSHOT_POOL_COLUMNS.items():
        pairs += [key(name), changed.c[column]]
    response = select(func.json_build_object(*pairs)).scalar_subquery()
    # Subqueries, not a join: the key row is written only when the UPDATE returned the pool.
    stored = (
        update(keys)
        .where(keys.c.id == param("record_id", keys.c.id), select(changed.c.id).exists())
        .values(response=response)
    )
    statement = select(*changed.c).add_cte(ledger_row.cte("ledger_row"), stored.cte("stored"))
    return select(QuotaPool).from_statement(statement).execution_options(populate_existing=True)


async def _change_balance_in_one_statement(
    session: AsyncSession,
    actor: Actor,
    op: BalanceOp,
    account: Account,
    amount_cents: int,
    idempotency_key: str,
    claim_: idempotency.Claim,
    owner_id: int,
) -> QuotaPool | None:
    """PostgreSQL: the guarded balance UPDATE, its ledger row and the key's stored result as one statement.

    Data-modifying CTEs run in one round trip and stand or fall together: when the guard refuses (the
    UPDATE returns no row) the ledger INSERT and the key UPDATE, which read from it, write nothing; the
    caller raises and the transaction rolls back anyway. The stored result is built by the database from
    the row the UPDATE returns, with the same keys as `pool_amounts.snapshot`. Returns the updated pool
    (the session's object refreshed), or None when the guard refused.
    """
    now = utcnow()
    params = {
        "pool_id": account.pool_id,
        "d": amount_cents,
        "now": now,
        "account_id": account.id,
        "d_ledger": amount_cents,
        "now_ledger": now,
        "method": actor.method,
        "operator_uid": actor.operator_uid,
        "idempotency_key": idempotency_key,
        "owner_id": owner_id,
        "record_id": claim_.record_id,
    }
    result = await session.execute(_one_statement(op), params)
    return result.scalars().one_or_none()


async def purge_expired(db: Database, settings: Settings) -> int:
    """Delete idempotency keys older than `settings.idempotency_ttl_hours` (at least 24 h); the count deleted."""
    async with db.write() as session:
        return await idempotency.purge(session, timedelta(hours=settings.idempotency_ttl_hours))

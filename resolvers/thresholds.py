"""A pool's alert thresholds, the automatic actions they carry, and the periodic forecast pass.

A pool has at most `MAX_THRESHOLDS` thresholds. Each remembers its own side
(`QuotaThreshold.below`) and is evaluated by `resolvers.crossing.evaluate_pool`
with the crossing rule of the warning: one event per crossing, re-armed on
recovery. The first PERCENT_OF_QUOTA threshold (lowest id) is the pool's
warning: `setWarningThreshold` creates, changes or removes it, and
`QuotaPool.warning_percent` / `warning_below` mirror it (the SQL filters on
the warning level read those columns).

Decisions this module documents:

* Adding or changing a threshold keeps its side and re-evaluates the pool at
  once: a threshold added below is BREACHED at once (like a warning percent);
  a change that moves the level across available is a crossing too.
* Removing a threshold forgets it silently (no RECOVERED: nothing recovered).
* `requiresApproval` needs an `action`; an action fires on the BREACHED
  crossing only, so an operator's unban or unfreeze stays until the next
  crossing.
* RUNS_OUT_WITHIN_DAYS forecasts over `FORECAST_BASIS_DAYS` (7) days of
  spend; with no spend there is no forecast and the threshold is not breached.
  Besides every change of the pool, `evaluate_forecasts` re-evaluates pools
  with such a threshold periodically (time alone moves the forecast window).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account, PendingAction, QuotaPool, QuotaThreshold
from uidhub.models.base import utcnow
from uidhub.models.enums import (
    AlertSeverity,
    AuditAction,
    ErrorCode,
    PendingActionStatus,
    ThresholdAction,
    ThresholdKind,
)
from uidhub.models.money import MAX_CENTS, format_money
from uidhub.resolvers import accounts as account_ops
from uidhub.resolvers import audit, cascade
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.crossing import evaluate_pool
from uidhub.resolvers.errors import UserError, UserErrors
from uidhub.resolvers.locks import lock_pool
from uidhub.resolvers.pagination import Page, newest_first
from uidhub.resolvers.pool_amounts import PoolResult
from uidhub.resolvers.pools import after_pool_change

if TYPE_CHECKING:
    from uidhub.db import Database

log = logging.getLogger(__name__)

MAX_THRESHOLDS = 10
MAX_DAYS = 365
MAX_RECIPIENTS = 100
PENDING_CURSOR = "pending"


@dataclass(frozen=True)
class ThresholdSpec:
    """What an operator sets on a threshold (add and change take the same, whole)."""

    kind: ThresholdKind
    value: int | None
    amount_cents: int | None
    severity: AlertSeverity
    recipients: Sequence[str] | None
    action: ThresholdAction | None
    requires_approval: bool


def _error(message: str, *path: str) -> UserError:
    return UserError(ErrorCode.INVALID_INPUT, message, ("input", *path))


def check_spec(spec: ThresholdSpec) -> tuple[int, list[str] | None]:
    """The stored value and cleaned recipients, or every input problem at once (UserErrors)."""
    errors: list[UserError] = []
    stored = 0
    if spec.kind is ThresholdKind.AVAILABLE_BELOW:
        if spec.value is not None:
            errors.append(_error("AVAILABLE_BELOW takes `amount`, not `value`.", "value"))
        if spec.amount_cents is None:
            errors.append(_error("AVAILABLE_BELOW needs `amount`.", "amount"))
        elif not -MAX_CENTS < spec.amount_cents < MAX_CENTS:
            errors.append(_error("amount must be above -10^12 and below 10^12.", "amount"))
        else:
            stored = spec.amount_cents
    else:
        low, high = (1, 100) if spec.kind is ThresholdKind.PERCENT_OF_QUOTA else (1, MAX_DAYS)
        if spec.amount_cents is not None:
            errors.append(_error(f"{spec.kind.value} takes `value`, not `amount`.", "amount"))
        if spec.value is None or not low <= spec.value <= high:
            errors.append(_error(f"{spec.kind.value} needs `value` between {low} and {high}.", "value"))
        else:
            stored = spec.value
    if spec.requires_approval and spec.action is None:
        errors.append(_error("requiresApproval needs an action.", "requiresApproval"))
    cleaned: list[str] | None = None
    if spec.recipients is not None:
        if len(spec.recipients) > MAX_RECIPIENTS:
            errors.append(_error(f"At most {MAX_RECIPIENTS} recipients.", "recipients"))
        else:
            cleaned = []
            seen: set[str] = set()
            for index, raw in enumerate(spec.recipients):
                address = raw.strip()
                problem = account_ops.check_email(address, "input", "recipients", str(index))
                if problem is not None:
                    errors.append(problem)
                elif address.lower() not in seen:
                    seen.add(address.lower())
                    cleaned.append(address)
            if not cleaned and not errors:
                errors.append(_error("recipients must name at least one address, or be null.", "recipients"))
    if errors:
        raise UserErrors(errors)
    return stored, cleaned


def snapshot(threshold: QuotaThreshold) -> dict[str, Any]:
    """An audit before/after of a threshold."""
    value: Any = format_money(threshold.value) if threshold.kind is ThresholdKind.AVAILABLE_BELOW else threshold.value
    return {
        "thresholdId": threshold.id,
        "kind": threshold.kind.value,
        "value": value,
        "severity": threshold.severity.value,
        "recipients": threshold.recipients,
        "action": threshold.action.value if threshold.action else None,
        "requiresApproval": threshold.requires_approval,
    }


async def pool_thresholds(session: AsyncSession, pool_id: int) -> list[QuotaThreshold]:
    query = select(QuotaThreshold).where(QuotaThreshold.pool_id == pool_id).order_by(QuotaThreshold.id)
    return list((await session.scalars(query.execution_options(populate_existing=True))).all())


async def adopt_warning(session: AsyncSession, pool: QuotaPool) -> None:
    """Give a warning percent stored without its threshold row (older data) its row, on the side it was on."""
    if pool.warning_percent is None:
        return
    exists = await session.scalar(
        select(QuotaThreshold.id)
        .where(QuotaThreshold.pool_id == pool.id, QuotaThreshold.kind == ThresholdKind.PERCENT_OF_QUOTA)
        .limit(1)
    )
    if exists is None:
        session.add(
            QuotaThreshold(
                partner_id=pool.partner_id,
                pool_id=pool.id,
                kind=ThresholdKind.PERCENT_OF_QUOTA,
                value=pool.warning_percent,
                severity=AlertSeverity.WARNING,
                recipients=None,
                action=None,
                requires_approval=False,
                below=bool(pool.warning_below),
            )
        )
        await session.flush()


async def sync_warning(session: AsyncSession, pool: QuotaPool) -> None:
    """Mirror the first PERCENT_OF_QUOTA threshold into `warning_percent` / `warning_below`."""
    first = await session.scalar(
        select(QuotaThreshold)
        .where(QuotaThreshold.pool_id == pool.id, QuotaThreshold.kind == ThresholdKind.PERCENT_OF_QUOTA)
        .order_by(QuotaThreshold.id)
        .limit(1)
        .execution_options(populate_existing=True)
    )
    pool.warning_percent = first.value if first is not None else None
    pool.warning_below = bool(first.below) if first is not None else False


async def _owner_pool(session: AsyncSession, actor: Actor, uid: str) -> tuple[Account, QuotaPool]:
    """The pool owner named by `uid` (not a sub-account, active) and its pool, locked in the lock order."""
    account = await account_ops.get(session, actor, uid, "input", "uid", share=True)
    if account.master_id is not None:
        raise UserErrors.one(
            ErrorCode.QUOTA_MANAGED_BY_MASTER,
            f"{uid} is a sub-account: its alert thresholds are its master's; set them on the master.",
            "input",
            "uid",
        )
    account_ops.require_active(account, "input", "uid")
    pool = await lock_pool(session, account.pool_id)
    await adopt_warning(session, pool)
    return account, pool


async def _count(session: AsyncSession, pool_id: int) -> int:
    query = select(func.count(QuotaThreshold.id)).where(QuotaThreshold.pool_id == pool_id)
    return int(await session.scalar(query) or 0)


def _too_many() -> UserErrors:
    return UserErrors.one(
        ErrorCode.TOO_MANY_THRESHOLDS, f"A pool has at most {MAX_THRESHOLDS} alert thresholds.", "input", "uid"
    )


async def add_threshold(session: AsyncSession, actor: Actor, uid: str, spec: ThresholdSpec) -> PoolResult:
    """`addQuotaThreshold`: at most 10 per pool, audited, evaluated at once."""
    actor.require(Permission.QUOTA)
    value, recipients = check_spec(spec)
    account, pool = await _owner_pool(session, actor, uid)
    if await _count(session, pool.id) >= MAX_THRESHOLDS:
        raise _too_many()
    threshold = QuotaThreshold(
        partner_id=pool.partner_id,
        pool_id=pool.id,
        kind=spec.kind,
        value=value,
        severity=spec.severity,
        recipients=recipients,
        action=spec.action,
        requires_approval=spec.requires_approval,
        below=False,
    )
    session.add(threshold)
    await session.flush()
    audit.record(session, actor, account, AuditAction.THRESHOLD_ADDED, after=snapshot(threshold))
    await _settle(session, pool, actor)
    return PoolResult(pool=pool, owner_id=account.id)


async def _settle(session: AsyncSession, pool: QuotaPool, actor: Actor) -> None:
    """Re-evaluate the pool after a threshold change, then mirror the warning."""
    await sync_warning(session, pool)
    await session.flush()
    await after_pool_change(session, pool, actor)
    await sync_warning(session, pool)
    await session.flush()


async def _find(session: AsyncSession, actor: Actor, threshold_id: int) -> tuple[Account, QuotaPool, QuotaThreshold]:
    """The threshold by id, its pool owner (visible to `actor`) and pool, locked; NOT_FOUND otherwise."""
    row = await session.get(QuotaThreshold, threshold_id)
    owner = None
    if row is not None and row.partner_id == actor.partner_id:
        owner = await session.scalar(
            select(Account).where(Account.pool_id == row.pool_id, Account.master_id.is_(None), actor.account_scope())
        )
    if row is None or owner is None:
        raise UserErrors.one(ErrorCode.NOT_FOUND, "No such alert threshold.", "input", "id")
    account, pool = await _owner_pool(session, actor, owner.uid)
    threshold = await session.get(QuotaThreshold, threshold_id, populate_existing=True)
    if threshold is None:  # removed meanwhile
        raise UserErrors.one(ErrorCode.NOT_FOUND, "No such alert threshold.", "input", "id")
    return account, pool, threshold


async def change_threshold(session: AsyncSession, actor: Actor, threshold_id: int, spec: ThresholdSpec) -> PoolResult:
    """`updateQuotaThreshold`: replace what is set on it; its side is kept and the pool re-evaluated."""
    actor.require(Permission.QUOTA)
    value, recipients = check_spec(spec)
    account, pool, threshold = await _find(session, actor, threshold_id)
    before = snapshot(threshold)
    threshold.kind = spec.kind
    threshold.value = value
    threshold.severity = spec.severity
    threshold.recipients = recipients
    threshold.action = spec.action
    threshold.requires_approval = spec.requires_approval
    old, new = audit.diff(before, snapshot(threshold))
    if new:
        audit.record(session, actor, account, AuditAction.THRESHOLD_CHANGED, before=old, after=new)
        await _settle(session, pool, actor)
    return PoolResult(pool=pool, owner_id=account.id)


async def remove_threshold(session: AsyncSession, actor: Actor, threshold_id: int) -> PoolResult:
    """`removeQuotaThreshold`: forgotten silently (no RECOVERED), audited."""
    actor.require(Permission.QUOTA)
    account, pool, threshold = await _find(session, actor, threshold_id)
    before = snapshot(threshold)
    await session.execute(delete(QuotaThreshold).where(QuotaThreshold.id == threshold.id))
    session.expunge(threshold)
    audit.record(session, actor, account, AuditAction.THRESHOLD_REMOVED, before=before)
    await _settle(session, pool, actor)
    return PoolResult(pool=pool, owner_id=account.id)


async def set_warning(session: AsyncSession, pool: QuotaPool, percent: int | None) -> None:
    """`setWarningThreshold`'s change: create, change or remove the pool's first PERCENT_OF_QUOTA threshold."""
    await adopt_warning(session, pool)
    first = await session.scalar(
        select(QuotaThreshold)
        .where(QuotaThreshold.pool_id == pool.id, QuotaThreshold.kind == ThresholdKind.PERCENT_OF_QUOTA)
        .order_by(QuotaThreshold.id)
        .limit(1)
        .execution_options(populate_existing=True)
    )
    if percent is None:
        if first is not None:
            await session.execute(delete(QuotaThreshold).where(QuotaThreshold.id == first.id))
            session.expunge(first)
    elif first is not None:
        first.value = percent
    else:
        if await _count(session, pool.id) >= MAX_THRESHOLDS:
            raise UserErrors.one(
                ErrorCode.TOO_MANY_THRESHOLDS,
                f"A pool has at most {MAX_THRESHOLDS} alert thresholds; remove one to set a warning.",
                "input",
                "percent",
            )
        session.add(
            QuotaThreshold(
                partner_id=pool.partner_id,
                pool_id=pool.id,
                kind=ThresholdKind.PERCENT_OF_QUOTA,
                value=percent,
                severity=AlertSeverity.WARNING,
                recipients=None,
                action=None,
                requires_approval=False,
                below=False,
            )
        )
    await session.flush()
    await sync_warning(session, pool)


# ---------------------------------------------------------------- pending actions


def pending_conditions(actor: Actor, status: PendingActionStatus | None) -> list[Any]:
    conditions: list[Any] = [PendingAction.partner_id == actor.partner_id]
    if actor.account_id is not None:
        conditions.append(PendingAction.account_id.in_(select(Account.id).where(actor.account_scope())))
    if status is not None:
        conditions.append(PendingAction.status == status)
    return conditions


async def list_pending(
    session: AsyncSession, actor: Actor, *, first: int | None, after: str | None, status: PendingActionStatus | None
) -> Page[PendingAction]:
    """The actor's visible pending actions, newest first, keyset by id."""
    return await newest_first(
        session, PendingAction, pending_conditions(actor, status), first=first, after=after, cursor_kind=PENDING_CURSOR
    )


async def decide(session: AsyncSession, actor: Actor, pending_id: int, *, approve: bool) -> PendingAction:
    """Approve (apply, with the operator as actor) or dismiss a PENDING action, once, audited."""

    actor.require(Permission.POLICY)
    row = await session.get(PendingAction, pending_id)
    owner = None
    if row is not None and row.partner_id == actor.partner_id:
        owner = await session.scalar(select(Account).where(Account.id == row.account_id, actor.account_scope()))
    if row is None or owner is None:
        raise UserErrors.one(ErrorCode.NOT_FOUND, "No such pending action.", "input", "id")
    status = PendingActionStatus.APPROVED if approve else PendingActionStatus.DISMISSED
    reason = f"Pending action {pending_id} ({row.action.value}) approved."
    if approve:
        # Lock order: the owner and its subs (the cascade), then the pending row's guarded update.
        if row.action is ThresholdAction.BAN_PURCHASES:
            await cascade.ban_owner(session, actor, owner.id, reason)
        else:
            await cascade.freeze_owner(session, actor, owner.id, reason)
    decided = await session.scalar(
        update(PendingAction)
        .where(PendingAction.id == pending_id, PendingAction.status == PendingActionStatus.PENDING)
        .values(status=status, decided_at=utcnow(), decided_by=actor.operator_uid)
        .returning(PendingAction.id)
        .execution_options(synchronize_session=False)
    )
    if decided is None:
        raise UserErrors.one(
            ErrorCode.INVALID_INPUT, f"Pending action {pending_id} was already decided.", "input", "id"
        )
    audit.record(
        session,
        actor,
        owner,
        AuditAction.PENDING_ACTION_APPROVED if approve else AuditAction.PENDING_ACTION_DISMISSED,
        before={"pendingActionId": pending_id, "status": PendingActionStatus.PENDING.value},
        after={"pendingActionId": pending_id, "status": status.value, "action": row.action.value},
    )
    await session.flush()
    fresh = await session.get(PendingAction, pending_id, populate_existing=True)
    assert fresh is not None
    return fresh


# ---------------------------------------------------------------- the periodic pass


async def forecast_pools(db: Database) -> list[int]:
    """Pools with a RUNS_OUT_WITHIN_DAYS threshold: the ones time alone can move across one."""
    async with db.read() as session:
        rows = await session.scalars(
            select(QuotaThreshold.pool_id)
            .where(QuotaThreshold.kind == ThresholdKind.RUNS_OUT_WITHIN_DAYS)
            .distinct()
            .order_by(QuotaThreshold.pool_id)
        )
        return list(rows.all())


async def evaluate_forecasts(db: Database, now: datetime | None = None) -> int:
    """Re-evaluate every pool with a forecast threshold, one write transaction per pool; the events stored.

    Each pool is locked (step 4 of the lock order) before its thresholds are
    compared, and every crossing is a guarded UPDATE, so two workers running
    the pass at once store each crossing once.
    """
    stored = 0
    for pool_id in await forecast_pools(db):
        async with db.write() as session:
            pool = await lock_pool(session, pool_id)
            stored += len(await evaluate_pool(session, pool, now))
            await session.flush()
    return stored

"""Temporary credit: a raise of a pool's amount that the system lowers again by itself.

`grantTemporaryCredit` raises the amount now and stores the grant (a
`TemporaryCredit` row, ACTIVE, with its `ends_at`): that row is the durable
schedule. `uidhub.background.TemporaryCreditWorker` runs in every server process (on the
background pool) and reverts every ACTIVE grant whose `ends_at` has passed;
its first pass runs at start-up, so a grant that lapsed while the server was
down is reverted at once. `revokeTemporaryCredit` reverts one early through
the same `revert`.

Exactly once, across workers, processes and restarts. `revert` takes the
locks of the documented order (`resolvers.locks`): the owner account FOR
SHARE (step 3), the pool (step 4), and only then claims the grant with a
guarded `UPDATE … SET status = … WHERE id = :id AND status = 'ACTIVE'
RETURNING` (step 5: rows only written under their pool's lock). Two
reverters of one grant (two workers, or a worker and an operator's revoke)
queue on the pool lock; the second one's UPDATE reads the committed row
(READ COMMITTED re-reads after the wait; SQLite serialises write
transactions with BEGIN IMMEDIATE), matches nothing, and the transaction
writes nothing. The change of the amount, its quota record, its audit entry,
the grant's new status and every alert it causes commit together, or none of
them does. (Claiming the grant row first, e.g. FOR UPDATE SKIP LOCKED, would
lock a step-5 row before the pool: a revoke holding the pool and waiting for
the grant would deadlock with it.)

Decisions:

* The revert subtracts the granted amount from the amount *as it is then*,
  never going below 0.00: an operator's `setQuotaAmount` in between is kept,
  and the grant's share comes off on top of it. When the amount is below the
  grant by then, the revert takes the amount to 0.00 and records on the grant
  (`revertedAmount`), the quota record's reason and the audit entry how much
  it actually took off.
* A grant on an account that is TERMINATED or DELETED by then is closed
  without touching the pool (such an account takes no further changes):
  `revertedAmount` 0.00.
* Grant records and entries carry the operator's method; the automatic revert
  is SYSTEM, an early revoke the revoking operator's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account, TemporaryCredit
from uidhub.models import rules as R
from uidhub.models.base import utcnow
from uidhub.models.enums import ErrorCode, OperationMethod, Role, TemporaryCreditStatus
from uidhub.models.money import MAX_CENTS, format_money
from uidhub.resolvers import accounts, idempotency
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.errors import UserError, UserErrors, invalid
from uidhub.resolvers.locks import lock_account, lock_pool
from uidhub.resolvers.pool_amounts import PoolResult, from_snapshot, snapshot, write_quota_amount

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

#: A reason is one line of text for people: at most this many characters, no control characters at all.
REASON_MAX_CHARS = 500
#: How far ahead a grant may end.
MAX_DURATION = timedelta(days=366)
MAX_DURATION_HOURS = 366 * 24
#: Active grants per pool: keeps `Quota.temporaryCredits` a short list.
MAX_ACTIVE_PER_POOL = 20


# ---------------------------------------------------------------- grant


@dataclass
class GrantResult:
    """What `grantTemporaryCredit` returns: the grant and the pool after it.

    On an idempotent repeat both are detached snapshots of the first result.
    """

    credit: TemporaryCredit
    pool: PoolResult


def _check_reason(reason: str, errors: list[UserError]) -> str:
    text = reason.strip()
    if not text:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "reason is required.", ("input", "reason")))
    elif len(text) > REASON_MAX_CHARS:
        errors.append(
            UserError(
                ErrorCode.INVALID_INPUT, f"reason is longer than {REASON_MAX_CHARS} characters.", ("input", "reason")
            )
        )
    elif any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        errors.append(
            UserError(
                ErrorCode.INVALID_INPUT, "reason must be one line without control characters.", ("input", "reason")
            )
        )
    return text


def _check_end(
    until: datetime | None, duration_hours: int | None, now: datetime, errors: list[UserError]
) -> datetime | None:
    """When the grant ends: `until`, or `durationHours` from now; exactly one of them, within 366 days."""
    if (until is None) == (duration_hours is None):
        errors.append(
            UserError(ErrorCode.INVALID_INPUT, "Give exactly one of until and durationHours.", ("input", "until"))
        )
        return None
    if duration_hours is not None:
        if not 1 <= duration_hours <= MAX_DURATION_HOURS:
            errors.append(
                UserError(
                    ErrorCode.INVALID_INPUT,
                    f"durationHours must be 1 to {MAX_DURATION_HOURS}.",
                    ("input", "durationHours"),
                )
            )
            return None
        return now + timedelta(hours=duration_hours)
    assert until is not None
    if until <= now:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "until must be in the future.", ("input", "until")))
    elif until > now + MAX_DURATION:
        errors.append(
            UserError(
                ErrorCode.INVALID_INPUT, f"until must be at most {MAX_DURATION.days} days ahead.", ("input", "until")
            )
        )
    return until


def _credit_snapshot(credit: TemporaryCredit) -> dict[str, Any]:
    return {
        "id": credit.id,
        "partnerId": credit.partner_id,
        "poolId": credit.pool_id,
        "accountId": credit.account_id,
        "amount": credit.amount_cents,
        "endsAt": credit.ends_at.isoformat(),
        "reason": credit.reason,
        "createdAt": credit.created_at.isoformat(),
        "method": credit.method.value,
        "operator": [
            credit.operator_uid,
            credit.operator_name,
            credit.operator_is_ram,
            credit.operator_role.value if credit.operator_role else None,
        ],
    }


def _credit_from_snapshot(data: dict[str, Any]) -> TemporaryCredit:
    uid, name, is_ram, role = data["operator"]
    return TemporaryCredit(
        id=data["id"],
        partner_id=data["partnerId"],
        pool_id=data["poolId"],
        account_id=data["accountId"],
        amount_cents=data["amount"],
        ends_at=datetime.fromisoformat(data["endsAt"]),
        reason=data["reason"],
        status=TemporaryCreditStatus.ACTIVE,
        created_at=datetime.fromisoformat(data["createdAt"]),
        method=OperationMethod(data["method"]),
        operator_uid=uid,
        operator_name=name,
        operator_is_ram=is_ram,
        operator_role=Role(role) if role else None,
    )


def _audit_view(credit: TemporaryCredit) -> dict[str, Any]:
    """What the audit entries of a grant and its revert say about it."""
    return {"amount": format_money(credit.amount_cents), "until": credit.ends_at.isoformat()}


async def grant(
    session: AsyncSession,
    actor: Actor,
    *,
    uid: str,
    amount_cents: int,
    until: datetime | None,
    duration_hours: int | None,
    reason: str,
    idempotency_key: str | None,
) -> GrantResult:
    """`grantTemporaryCredit`: raise the pool owner's amount now and schedule the revert at the end.

    Order: permission, input, the key claim (a repeat answers the stored
    first result), the account (FOR SHARE), the pool (locked), the grant row,
    then the amount through `pool_amounts.write_quota_amount` (record, audit entry,
    credit control and thresholds).
    """
    actor.require(Permission.QUOTA)
    now = utcnow()
    errors: list[UserError] = []
    if amount_cents <= 0:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "amount must be greater than zero.", ("input", "amount")))
    ends_at = _check_end(until, duration_hours, now, errors)
    text = _check_reason(reason, errors)
    if errors:
        raise UserErrors(errors)
    assert ends_at is not None
    claim_ = None
    if idempotency_key is not None:
        request = {
            "uid": uid,
            "amount": amount_cents,
            "until": until.isoformat() if until else None,
            "durationHours": duration_hours,
            "reason": text,
        }
        claim_ = await idempotency.claim(
            session, actor, idempotency_key, "grantTemporaryCredit", request, "input", "idempotencyKey"
        )
        if claim_.replay is not None:
            return GrantResult(
                credit=_credit_from_snapshot(claim_.replay["credit"]),
                pool=from_snapshot(claim_.replay["pool"]),
            )
    account = await accounts.get(session, actor, uid, "input", "uid", share=True)
    if account.master_id is not None:
        raise UserErrors.one(
            ErrorCode.QUOTA_MANAGED_BY_MASTER,
            f"{uid} is a sub-account: it spends from its master's quota; grant the credit on the master.",
            "input",
            "uid",
        )
    accounts.require_active(account, "input", "uid")
    pool = await lock_pool(session, account.pool_id)
    if pool.amount_cents + amount_cents >= MAX_CENTS:
        raise invalid("The amount with this credit would reach 10^12.", "input", "amount")
    active = await session.scalar(
        select(func.count()).where(
            TemporaryCredit.pool_id == pool.id, TemporaryCredit.status == TemporaryCreditStatus.ACTIVE
        )
    )
    if int(active or 0) >= MAX_ACTIVE_PER_POOL:
        raise invalid(f"At most {MAX_ACTIVE_PER_POOL} temporary credits may be active on a pool.", "input", "uid")
    credit = TemporaryCredit(
        partner_id=account.partner_id,
        pool_id=pool.id,
        account_id=account.id,
        amount_cents=amount_cents,
        ends_at=ends_at,
        reason=text,
        status=TemporaryCreditStatus.ACTIVE,
        created_at=now,
        method=actor.method,
        **actor.operator_fields(),
    )
    session.add(credit)
    await session.flush()
    await write_quota_amount(
        session,
        actor,
        account,
        pool,
        pool.amount_cents + amount_cents,
        reason=f"Temporary credit until {ends_at.isoformat()}: {text}",
        audit_extra={"temporaryCredit": _audit_view(credit)},
    )
    result = GrantResult(credit=credit, pool=PoolResult(pool=pool, owner_id=account.id))
    if claim_ is not None:
        await idempotency.complete(session, claim_, {"credit": _credit_snapshot(credit), "pool": snapshot(result.pool)})
    return result


# ---------------------------------------------------------------- revert


@dataclass
class Reverted:
    """A grant this transaction ended, and the pool after it."""

    credit: TemporaryCredit
    pool: PoolResult


async def revert(session: AsyncSession, credit_id: int, actor: Actor | None, now: datetime) -> Reverted | None:
    """End one ACTIVE grant in this transaction: lower the amount back, record it, re-evaluate the pool.

    `actor=None` is the scheduled revert (EXPIRED, method SYSTEM); an actor
    revokes it early (REVOKED). None when the grant is not ACTIVE any more:
    another worker or a revoke ended it first, and nothing is written.
    """
    row = await session.get(TemporaryCredit, credit_id)
    if row is None or row.status is not TemporaryCreditStatus.ACTIVE:
        return None
    # The lock order of resolvers.locks: the account (read to decide), the pool, then the grant row.
    account = await lock_account(session, row.account_id, share=True)
    pool = await lock_pool(session, row.pool_id)
    active = R.takes_changes(account.status)
    new_amount = max(0, pool.amount_cents - row.amount_cents) if active else pool.amount_cents
    reverted = pool.amount_cents - new_amount
    status = TemporaryCreditStatus.REVOKED if actor is not None else TemporaryCreditStatus.EXPIRED
    ended_by: dict[str, Any] = {}
    if actor is not None:
        ended_by = {
            "ended_by_uid": actor.operator_uid,
            "ended_by_name": actor.operator_name,
            "ended_by_is_ram": actor.is_ram,
            "ended_by_role": actor.role,
        }
    credit = await session.scalar(
        update(TemporaryCredit)
        .where(TemporaryCredit.id == credit_id, TemporaryCredit.status == TemporaryCreditStatus.ACTIVE)
        .values(status=status, ended_at=now, reverted_cents=reverted, **ended_by)
        .returning(TemporaryCredit)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    if credit is None:
        return None  # ended by someone else while this transaction waited for the pool
    if active:
        what = "revoked" if actor is not None else "ended"
        reason = f"Temporary credit {what}: {credit.reason}"
        if reverted < credit.amount_cents:
            reason += (
                f" (took off {format_money(reverted)} of {format_money(credit.amount_cents)}: the amount was lower)"
            )
        await write_quota_amount(
            session,
            actor,
            account,
            pool,
            new_amount,
            reason=reason,
            audit_extra={
                "temporaryCredit": {**_audit_view(credit), "status": status.value, "reverted": format_money(reverted)}
            },
        )
    else:
        log.info(
            "temporary credit %s of %s closed without a revert: the account is %s",
            credit.id,
            account.uid,
            account.status.value,
        )
    return Reverted(credit=credit, pool=PoolResult(pool=pool, owner_id=account.id))


async def find_visible(session: AsyncSession, actor: Actor, credit_id: int) -> TemporaryCredit | None:
    """The grant if `actor` may see it: one of its accounts spends from the grant's pool."""
    row = await session.get(TemporaryCredit, credit_id)
    if row is None or row.partner_id != actor.partner_id:
        return None
    visible = await session.scalar(
        select(Account.id).where(Account.pool_id == row.pool_id, actor.account_scope()).limit(1)
    )
    return row if visible is not None else None


async def revoke(session: AsyncSession, actor: Actor, credit_id: int | None) -> Reverted:
    """`revokeTemporaryCredit`: revert one ACTIVE grant now, through the same `revert` as the worker."""
    actor.require(Permission.QUOTA)
    row = None if credit_id is None else await find_visible(session, actor, credit_id)
    if row is None:
        raise UserErrors.one(ErrorCode.NOT_FOUND, "No such temporary credit.", "input", "id")
    if row.status is not TemporaryCreditStatus.ACTIVE:
        raise invalid(f"This temporary credit has already ended ({row.status.value}).", "input", "id")
    reverted = await revert(session, row.id, actor, utcnow())
    if reverted is None:
        raise invalid("This temporary credit has already ended.", "input", "id")
    return reverted


# ---------------------------------------------------------------- the worker

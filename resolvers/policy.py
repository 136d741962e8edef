"""Shutdown policy, PAYG freeze, purchase control and credit control.

Locking. Every operation here locks the account rows it reads its decision
from, always in ascending id order in one statement (masters are linked
before their sub-accounts, so a master's id is below its subs'), and the pool
after the accounts: the lock order of `resolvers.locks`. `placeOrder`
(resolvers.orders) locks the ordering account and its master the same way,
so a freeze of a master and a PAYG order of one of its sub-accounts
serialise: the order either commits before the freeze or sees the master
FROZEN. On SQLite, write transactions are serialised by BEGIN IMMEDIATE
already.

Choices where RULES.md is silent (also in the README):

- `freezePayg`/`unfreezePayg`: a repeated UID is reported once. An account
  whose own setting changes gets PAYG_FROZEN/PAYG_UNFROZEN with before/after
  of its own and effective status; a sub-account whose own setting does not
  change but whose effective status changes through its master gets the same
  action with `cascadeFrom` the master and before/after of its effective
  status. `affectedPaygInstances` counts the PAYG instances of every account
  whose effective status changes (on unfreeze some may stay stopped by credit
  control: they "may" start again).
- `setPurchaseControl` cascades like the freeze: every sub-account whose
  effective purchase control changes through its master gets a
  PURCHASE_CONTROL_CHANGED entry with `cascadeFrom`; setting the same value
  again writes nothing.
- `setShutdownPolicy`: `shutdownDelayCredit` belongs to DELAY_STOP only; a
  non-zero credit with another policy is INVALID_INPUT, and the stored credit
  of NO_STOP / IMMEDIATE_STOP is 0. A negative credit is INVALID_INPUT.
  Setting the same policy and credit again writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account
from uidhub.models import rules as R
from uidhub.models.enums import (
    AuditAction,
    ErrorCode,
    PaygFreezeStatus,
    PurchaseControl,
    ShutdownPolicy,
)
from uidhub.models.money import MAX_CENTS, format_money
from uidhub.resolvers import accounts as account_ops
from uidhub.resolvers import audit
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.cascade import FreezeOutcome, apply_purchase_control, freeze_rows
from uidhub.resolvers.errors import UserErrors, invalid
from uidhub.resolvers.locks import for_write, lock_accounts, lock_pool
from uidhub.resolvers.pagination import check_list
from uidhub.resolvers.pools import after_pool_change

REASON_MAX_BYTES = 3000


# ---------------------------------------------------------------- credit control


# ---------------------------------------------------------------- helpers


def check_reason(reason: str | None, *field_path: str) -> None:
    if reason is None:
        return
    problem = R.text_problem(reason, max_bytes=REASON_MAX_BYTES)
    if problem:
        raise invalid(f"reason {problem}.", *field_path)


# ---------------------------------------------------------------- freeze


async def change_freeze(
    session: AsyncSession,
    actor: Actor,
    uids: Sequence[str],
    *,
    target: PaygFreezeStatus,
    confirm: bool,
    reason: str | None,
) -> FreezeOutcome:
    """freezePayg / unfreezePayg over several UIDs: preview (`confirm=False`) or apply.

    A constant number of statements whatever the number of accounts: one
    SELECT for the named accounts, their masters and their sub-accounts
    (locked in id order when applying), one COUNT of PAYG instances, and when
    applying one UPDATE plus the audit inserts.
    """
    actor.require(Permission.POLICY)
    check_list(uids, "uids")  # more than 100 is a GraphQL error, like every list in an input
    if not uids:
        raise invalid("uids must name at least one account.", "input", "uids")
    check_reason(reason, "input", "reason")
    wanted = list(dict.fromkeys(uids))

    named = select(Account.id).where(Account.uid.in_(wanted), actor.account_scope())
    named_masters = select(Account.master_id).where(
        Account.uid.in_(wanted), actor.account_scope(), Account.master_id.is_not(None)
    )
    query = (
        select(Account)
        .where(
            actor.account_scope(),
            or_(Account.uid.in_(wanted), Account.id.in_(named_masters), Account.master_id.in_(named)),
        )
        .order_by(Account.id)
    )
    if confirm:
        query = for_write(query)
    rows = (await session.scalars(query)).all()
    return await freeze_rows(session, actor, rows, wanted, target=target, confirm=confirm, reason=reason)


# ---------------------------------------------------------------- purchase control


async def set_purchase_control(
    session: AsyncSession, actor: Actor, uid: str, status: PurchaseControl, reason: str | None
) -> Account:
    actor.require(Permission.POLICY)
    check_reason(reason, "input", "reason")
    found = await account_ops.get(session, actor, uid, "input", "uid")
    # The account (and its sub-accounts, whose effective status follows a master), locked in id order.
    ids = [found.id]
    if found.master_id is None:
        ids += list((await session.scalars(select(Account.id).where(Account.master_id == found.id))).all())
    else:
        ids.append(found.master_id)
    locked = await lock_accounts(session, ids)
    account = locked[found.id]
    account_ops.require_active(account, "input", "uid")
    await apply_purchase_control(session, actor, locked, account, status, reason)
    return account


# ---------------------------------------------------------------- automatic actions (system or approved)


# ---------------------------------------------------------------- shutdown policy


async def set_shutdown_policy(
    session: AsyncSession, actor: Actor, uid: str, policy: ShutdownPolicy, delay_credit_cents: int | None
) -> Account:
    actor.require(Permission.POLICY)
    if delay_credit_cents is not None:
        if delay_credit_cents < 0:
            raise invalid("shutdownDelayCredit must not be negative.", "input", "shutdownDelayCredit")
        if delay_credit_cents >= MAX_CENTS:
            raise invalid("shutdownDelayCredit must be below 10^12.", "input", "shutdownDelayCredit")
        if policy is not ShutdownPolicy.DELAY_STOP and delay_credit_cents != 0:
            raise invalid("shutdownDelayCredit applies to DELAY_STOP only.", "input", "shutdownDelayCredit")
    found = await account_ops.get(session, actor, uid, "input", "uid")
    account = (await lock_accounts(session, [found.id]))[found.id]
    if account.master_id is not None:
        raise UserErrors.one(
            ErrorCode.POLICY_INHERITED,
            f"Account {uid} is a sub-account: it always follows its master's shutdown policy.",
            "input",
            "uid",
        )
    account_ops.require_active(account, "input", "uid")
    credit = (delay_credit_cents or 0) if policy is ShutdownPolicy.DELAY_STOP else 0
    pool = await lock_pool(session, account.pool_id)
    if pool.shutdown_policy is policy and pool.delay_credit_cents == credit:
        return account
    before = {
        "shutdownPolicy": pool.shutdown_policy.value,
        "shutdownDelayCredit": format_money(pool.delay_credit_cents),
    }
    pool.shutdown_policy = policy
    pool.delay_credit_cents = credit
    audit.record(
        session,
        actor,
        account,
        AuditAction.SHUTDOWN_POLICY_CHANGED,
        before=before,
        after={"shutdownPolicy": policy.value, "shutdownDelayCredit": format_money(credit)},
    )
    await session.flush()
    await after_pool_change(session, pool, actor)
    return account

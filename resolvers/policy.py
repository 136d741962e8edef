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
from dataclasses import dataclass, field

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from models import Account, Instance, QuotaPool
from models import rules as R
from models.enums import (
    AuditAction,
    BillingMethod,
    ErrorCode,
    PaygFreezeStatus,
    PurchaseControl,
    ShutdownPolicy,
)
from models.money import MAX_CENTS, format_money
from resolvers import accounts as account_ops
from resolvers import audit
from resolvers.actor import Actor, Permission
from resolvers.errors import UserError, UserErrors, invalid
from resolvers.locks import for_write, lock_accounts, lock_pool
from resolvers.pagination import check_list
from resolvers.pools import after_pool_change

REASON_MAX_BYTES = 3000


# ---------------------------------------------------------------- credit control


async def recompute_credit_control(session: AsyncSession, pool: QuotaPool) -> None:
    """Apply the credit control table of RULES.md to a locked `pool`.

    When the status changes, it is stored on the pool (which the master and all
    its sub-accounts read through `pool_id`) and every account of the pool gets
    a CREDIT_CONTROL_CHANGED entry with method SYSTEM.
    """
    before = pool.credit_control_status
    after = R.credit_control_status(pool.shutdown_policy, pool.available_cents, pool.delay_credit_cents)
    if after is before:
        return
    pool.credit_control_status = after
    accounts = (await session.scalars(select(Account).where(Account.pool_id == pool.id).order_by(Account.id))).all()
    available = format_money(pool.available_cents)
    for account in accounts:
        audit.record(
            session,
            None,
            account,
            AuditAction.CREDIT_CONTROL_CHANGED,
            before={"creditControlStatus": before.value},
            after={"creditControlStatus": after.value, "available": available},
        )
    await session.flush()


# ---------------------------------------------------------------- helpers


def check_reason(reason: str | None, *field_path: str) -> None:
    if reason is None:
        return
    problem = R.text_problem(reason, max_bytes=REASON_MAX_BYTES)
    if problem:
        raise invalid(f"reason {problem}.", *field_path)


# ---------------------------------------------------------------- freeze


@dataclass
class UidResult:
    uid: str
    account: Account | None
    errors: list[UserError] = field(default_factory=list)


@dataclass
class FreezeOutcome:
    applied: bool
    results: list[UidResult]
    affected: list[Account]
    affected_payg_instances: int


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
    by_id = {row.id: row for row in rows}
    by_uid = {row.uid: row for row in rows}
    subs_of: dict[int, list[Account]] = {}
    for row in rows:
        if row.master_id is not None:
            subs_of.setdefault(row.master_id, []).append(row)

    results: list[UidResult] = []
    changed: dict[int, Account] = {}
    for uid in wanted:
        account = by_uid.get(uid)
        if account is None:
            missing = UserError(ErrorCode.NOT_FOUND, f"No account with UID {uid!r}.", ("input", "uids"))
            results.append(UidResult(uid, None, [missing]))
            continue
        if not R.takes_changes(account.status):
            results.append(
                UidResult(
                    uid,
                    account,
                    [
                        UserError(
                            ErrorCode.ACCOUNT_NOT_ACTIVE,
                            f"Account {uid} is {account.status.value} and takes no further changes.",
                            ("input", "uids"),
                        )
                    ],
                )
            )
            continue
        results.append(UidResult(uid, account))
        if account.payg_freeze is not target:
            changed[account.id] = account

    def own_after(account: Account) -> PaygFreezeStatus:
        return target if account.id in changed else account.payg_freeze

    # Every account whose effective status may change: the changed ones and the subs of changed masters.
    candidates: dict[int, Account] = dict(changed)
    for account in changed.values():
        if account.master_id is None:
            for sub in subs_of.get(account.id, []):
                candidates.setdefault(sub.id, sub)
    transitions: dict[int, tuple[PaygFreezeStatus, PaygFreezeStatus]] = {}
    for account in candidates.values():
        master = by_id.get(account.master_id) if account.master_id is not None else None
        before = R.effective_freeze(account.payg_freeze, master.payg_freeze if master else None)
        after = R.effective_freeze(own_after(account), own_after(master) if master else None)
        if before is not after:
            transitions[account.id] = (before, after)
    affected = [by_id[i] for i in sorted(transitions)]

    payg_instances = 0
    if transitions:
        payg_instances = int(
            await session.scalar(
                select(func.count(Instance.id)).where(
                    Instance.account_id.in_(sorted(transitions)), Instance.billing_method == BillingMethod.PAYG
                )
            )
            or 0
        )

    if confirm and changed:
        action = AuditAction.PAYG_FROZEN if target is PaygFreezeStatus.FROZEN else AuditAction.PAYG_UNFROZEN
        entries: list[tuple[Account, PaygFreezeStatus, PaygFreezeStatus]] = []
        for account in sorted(changed.values(), key=lambda a: a.id):
            master = by_id.get(account.master_id) if account.master_id is not None else None
            eff_before = R.effective_freeze(account.payg_freeze, master.payg_freeze if master else None)
            eff_after = transitions.get(account.id, (eff_before, eff_before))[1]
            entries.append((account, account.payg_freeze, eff_before))
            audit.record(
                session, actor, account, action,
                before={"paygFreezeStatus": account.payg_freeze.value, "effectivePaygFreezeStatus": eff_before.value},
                after={"paygFreezeStatus": target.value, "effectivePaygFreezeStatus": eff_after.value},
                reason=reason,
            )
        for account_id, (eff_before, eff_after) in sorted(transitions.items()):
            if account_id in changed:
                continue
            sub = by_id[account_id]
            master = by_id[sub.master_id] if sub.master_id is not None else None
            audit.record(
                session, actor, sub, action,
                before={"effectivePaygFreezeStatus": eff_before.value},
                after={"effectivePaygFreezeStatus": eff_after.value},
                reason=reason,
                cascade_from=master,
            )
        await session.execute(
            update(Account)
            .where(Account.id.in_(sorted(changed)))
            .values(payg_freeze=target)
            .execution_options(synchronize_session=False)
        )
        for account in changed.values():
            set_committed_value(account, "payg_freeze", target)
    return FreezeOutcome(applied=confirm, results=results, affected=affected, affected_payg_instances=payg_instances)


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
    if account.purchase_control is status:
        return account
    master = locked.get(account.master_id) if account.master_id is not None else None
    master_own = master.purchase_control if master else None
    previous = account.purchase_control
    eff_before = R.effective_purchase_control(previous, master_own)
    eff_after = R.effective_purchase_control(status, master_own)
    account.purchase_control = status
    audit.record(
        session, actor, account, AuditAction.PURCHASE_CONTROL_CHANGED,
        before={"purchaseControl": previous.value, "effectivePurchaseControl": eff_before.value},
        after={"purchaseControl": status.value, "effectivePurchaseControl": eff_after.value},
        reason=reason,
    )
    if account.master_id is None:
        for sub in sorted(locked.values(), key=lambda a: a.id):
            if sub.master_id != account.id:
                continue
            sub_before = R.effective_purchase_control(sub.purchase_control, previous)
            sub_after = R.effective_purchase_control(sub.purchase_control, status)
            if sub_before is not sub_after:
                audit.record(
                    session, actor, sub, AuditAction.PURCHASE_CONTROL_CHANGED,
                    before={"effectivePurchaseControl": sub_before.value},
                    after={"effectivePurchaseControl": sub_after.value},
                    reason=reason,
                    cascade_from=account,
                )
    await session.flush()
    return account


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
        session, actor, account, AuditAction.SHUTDOWN_POLICY_CHANGED,
        before=before,
        after={"shutdownPolicy": policy.value, "shutdownDelayCredit": format_money(credit)},
    )
    await session.flush()
    await after_pool_change(session, pool, actor)
    return account

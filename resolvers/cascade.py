"""The cascade of a pool owner's policy to its sub-accounts, and credit control.

What operator operations (resolvers.policy) and automatic threshold actions
(resolvers.crossing) share: freezing PAYG and banning purchases on an owner
with the cascade, audit and events of RULES.md, and the credit control table
applied after every change to a pool. Nothing here calls the after-pool-change
sequence (resolvers.pools), which calls into this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from uidhub.models import Account, Instance, QuotaPool
from uidhub.models import rules as R
from uidhub.models.enums import (
    AuditAction,
    BillingMethod,
    ErrorCode,
    PaygFreezeStatus,
    PurchaseControl,
)
from uidhub.models.money import format_money
from uidhub.resolvers import audit
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.errors import UserError
from uidhub.resolvers.locks import for_write


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


async def freeze_rows(
    session: AsyncSession,
    actor: Actor | None,
    rows: Sequence[Account],
    wanted: Sequence[str],
    *,
    target: PaygFreezeStatus,
    confirm: bool,
    reason: str | None,
) -> FreezeOutcome:
    """The freeze cascade over rows already read (locked when applying): the named UIDs, their masters and subs.

    `actor=None` is the system (an automatic threshold action): the audit entries get method SYSTEM.
    """
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
                session,
                actor,
                account,
                action,
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
                session,
                actor,
                sub,
                action,
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


async def apply_purchase_control(
    session: AsyncSession,
    actor: Actor | None,
    locked: dict[int, Account],
    account: Account,
    status: PurchaseControl,
    reason: str | None,
) -> None:
    """Set `account`'s purchase control with its cascade to the sub-accounts in `locked` (its subs, locked).

    `actor=None` is the system (an automatic threshold action): the audit entries get method SYSTEM.
    """
    if account.purchase_control is status:
        return
    master = locked.get(account.master_id) if account.master_id is not None else None
    master_own = master.purchase_control if master else None
    previous = account.purchase_control
    eff_before = R.effective_purchase_control(previous, master_own)
    eff_after = R.effective_purchase_control(status, master_own)
    account.purchase_control = status
    audit.record(
        session,
        actor,
        account,
        AuditAction.PURCHASE_CONTROL_CHANGED,
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
                    session,
                    actor,
                    sub,
                    AuditAction.PURCHASE_CONTROL_CHANGED,
                    before={"effectivePurchaseControl": sub_before.value},
                    after={"effectivePurchaseControl": sub_after.value},
                    reason=reason,
                    cascade_from=account,
                )
    await session.flush()


async def _owner_and_subs(session: AsyncSession, owner_id: int) -> list[Account]:
    """The pool owner and its sub-accounts, locked in id order (step 3 of the lock order)."""
    query = select(Account).where(or_(Account.id == owner_id, Account.master_id == owner_id)).order_by(Account.id)
    return list((await session.scalars(for_write(query))).all())


async def freeze_owner(session: AsyncSession, actor: Actor | None, owner_id: int, reason: str | None) -> bool:
    """Freeze PAYG on a pool owner with the same cascade and audit as `freezePayg`; whether anything changed.

    Used by threshold actions (`actor=None`: SYSTEM) and by an operator approving a pending one.
    """
    rows = await _owner_and_subs(session, owner_id)
    owner = next((row for row in rows if row.id == owner_id), None)
    if owner is None:
        return False
    outcome = await freeze_rows(
        session, actor, rows, [owner.uid], target=PaygFreezeStatus.FROZEN, confirm=True, reason=reason
    )
    return bool(outcome.affected)


async def ban_owner(session: AsyncSession, actor: Actor | None, owner_id: int, reason: str | None) -> bool:
    """Ban purchases on a pool owner with the same cascade and audit as `setPurchaseControl`; whether it changed."""
    rows = await _owner_and_subs(session, owner_id)
    locked = {row.id: row for row in rows}
    owner = locked.get(owner_id)
    if owner is None or not R.takes_changes(owner.status) or owner.purchase_control is PurchaseControl.BANNED:
        return False
    await apply_purchase_control(session, actor, locked, owner, PurchaseControl.BANNED, reason)
    return True

"""Helpers of the policy and order tests (no tests here)."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import func, select

from tests.support.api import Api, make_token
from uidhub.db import Database
from uidhub.models import Account, AuditEntry, IdempotencyRecord, Instance, LedgerEntry, Partner, QuotaPool
from uidhub.models.enums import AccountType, BillingMethod, Role

_keys = itertools.count(1)

POLICY_FIELDS = (
    "paygFreezeStatus effectivePaygFreezeStatus purchaseControl effectivePurchaseControl "
    "shutdownPolicy shutdownDelayCredit creditControlStatus"
)
ERRORS = "userErrors { code message field }"
DECISION = "allowed reasons availableQuota blockingAccount { uid }"
INSTANCE = "id billingMethod status stopReasons description createdAt account { uid }"

FREEZE_PAYLOAD = (
    "applied affectedPaygInstances affectedAccounts { uid } "
    f"results {{ uid endUser {{ uid policy {{ paygFreezeStatus effectivePaygFreezeStatus }} }} {ERRORS} }} {ERRORS}"
)
FREEZE = f"mutation($i: FreezeInput!) {{ freezePayg(input: $i) {{ {FREEZE_PAYLOAD} }} }}"
UNFREEZE = f"mutation($i: FreezeInput!) {{ unfreezePayg(input: $i) {{ {FREEZE_PAYLOAD} }} }}"
PURCHASE = (
    "mutation($i: SetPurchaseControlInput!) { setPurchaseControl(input: $i) "
    f"{{ endUser {{ uid policy {{ {POLICY_FIELDS} }} }} {ERRORS} }} }}"
)
SHUTDOWN = (
    "mutation($i: SetShutdownPolicyInput!) { setShutdownPolicy(input: $i) "
    f"{{ endUser {{ uid policy {{ {POLICY_FIELDS} }} }} {ERRORS} }} }}"
)
ORDER = (
    "mutation($i: PlaceOrderInput!) { placeOrder(input: $i) "
    f"{{ decision {{ {DECISION} }} instance {{ {INSTANCE} }} {ERRORS} }} }}"
)
CHECK = (
    "query($uid: String!, $m: BillingMethod!, $a: Money!) "
    f"{{ purchaseCheck(uid: $uid, billingMethod: $m, amount: $a) {{ {DECISION} }} }}"
)
STATE = (
    "query($uid: String!) { endUser(uid: $uid) { uid "
    f"policy {{ {POLICY_FIELDS} }} quota {{ amount available consumedUndeducted }} "
    f"instances {{ {INSTANCE} }} }} }}"
)


async def set_quota(api: Api, uid: str, amount: str) -> None:
    data = await api.gql(
        "mutation($i: SetQuotaAmountInput!) { setQuotaAmount(input: $i) { userErrors { code message } } }",
        {"i": {"uid": uid, "amount": amount}},
    )
    assert data["setQuotaAmount"]["userErrors"] == [], data


async def freeze(
    api: Api,
    uids: list[str],
    *,
    confirm: bool = True,
    reason: str | None = None,
    unfreeze: bool = False,
    as_: str = "admin",
) -> dict[str, Any]:
    data = await api.gql(
        UNFREEZE if unfreeze else FREEZE, {"i": {"uids": uids, "confirm": confirm, "reason": reason}}, as_=as_
    )
    return data["unfreezePayg" if unfreeze else "freezePayg"]


async def purchase_control(
    api: Api, uid: str, status: str, reason: str | None = None, as_: str = "admin"
) -> dict[str, Any]:
    data = await api.gql(PURCHASE, {"i": {"uid": uid, "status": status, "reason": reason}}, as_=as_)
    return data["setPurchaseControl"]


async def shutdown_policy(
    api: Api, uid: str, policy: str, credit: str | None = None, as_: str = "admin"
) -> dict[str, Any]:
    data = await api.gql(SHUTDOWN, {"i": {"uid": uid, "policy": policy, "shutdownDelayCredit": credit}}, as_=as_)
    return data["setShutdownPolicy"]


async def order(
    api: Api,
    uid: str,
    method: str,
    amount: str,
    *,
    key: str | None = None,
    description: str | None = None,
    as_: str = "admin",
    token: str | None = None,
) -> dict[str, Any]:
    variables = {
        "i": {
            "uid": uid,
            "billingMethod": method,
            "amount": amount,
            "description": description,
            "idempotencyKey": key or f"k-{next(_keys)}",
        }
    }
    data = await api.gql(ORDER, variables, as_=as_, token=token)
    return data["placeOrder"]


async def check(
    api: Api, uid: str, method: str, amount: str, *, as_: str = "admin", token: str | None = None
) -> dict[str, Any]:
    data = await api.gql(CHECK, {"uid": uid, "m": method, "a": amount}, as_=as_, token=token)
    return data["purchaseCheck"]


async def state(api: Api, uid: str) -> dict[str, Any]:
    data = await api.gql(STATE, {"uid": uid})
    return data["endUser"]


async def entries(db: Database, uid: str, *actions: str) -> list[AuditEntry]:
    """Audit entries of `uid`, oldest first (optionally only these actions)."""
    async with db.read() as session:
        account_id = await session.scalar(select(Account.id).where(Account.uid == uid))
        query = select(AuditEntry).where(AuditEntry.account_id == account_id)
        if actions:
            query = query.where(AuditEntry.action.in_(actions))
        return list((await session.scalars(query.order_by(AuditEntry.id))).all())


async def row_counts(db: Database) -> dict[str, int]:
    """Rows of every table a policy change or an order may write."""
    async with db.read() as session:
        out: dict[str, int] = {}
        for name, model in (
            ("audit", AuditEntry),
            ("instances", Instance),
            ("ledger", LedgerEntry),
            ("keys", IdempotencyRecord),
        ):
            out[name] = int(await session.scalar(select(func.count()).select_from(model)) or 0)
        return out


async def account_snapshot(db: Database) -> list[tuple[Any, ...]]:
    async with db.read() as session:
        accounts = (
            await session.execute(
                select(Account.uid, Account.payg_freeze, Account.purchase_control).order_by(Account.uid)
            )
        ).all()
        pools = (
            await session.execute(
                select(
                    QuotaPool.id,
                    QuotaPool.amount_cents,
                    QuotaPool.undeducted_cents,
                    QuotaPool.shutdown_policy,
                    QuotaPool.credit_control_status,
                ).order_by(QuotaPool.id)
            )
        ).all()
        return [tuple(r) for r in accounts] + [tuple(r) for r in pools]


async def token(api: Api, role: Role, partner_uid: str = "P-MAIN", **kw: Any) -> str:
    async with api.db.read() as session:
        partner = await session.scalar(select(Partner).where(Partner.uid == partner_uid))
    assert partner is not None
    return await make_token(api.db, partner, role, **kw)


async def bulk_master(db: Database, partner_uid: str, master_uid: str, subs: int, instances_per_account: int) -> None:
    """A master with `subs` sub-accounts and PAYG/SUBSCRIPTION instances, inserted directly (fast setup)."""
    async with db.write() as session:
        partner_id = await session.scalar(select(Partner.id).where(Partner.uid == partner_uid))
        assert partner_id is not None
        pool = QuotaPool(partner_id=partner_id, amount_cents=100_00, quota_created=True)
        session.add(pool)
        await session.flush()
        master = Account(partner_id=partner_id, uid=master_uid, account_type=AccountType.END_USER, pool_id=pool.id)
        session.add(master)
        await session.flush()
        accounts = [master]
        for i in range(subs):
            sub = Account(
                partner_id=partner_id,
                uid=f"{master_uid}-S{i:03d}",
                account_type=AccountType.END_USER,
                pool_id=pool.id,
                master_id=master.id,
            )
            accounts.append(sub)
        session.add_all(accounts[1:])
        await session.flush()
        session.add_all(
            Instance(account_id=a.id, billing_method=BillingMethod.PAYG if n % 2 == 0 else BillingMethod.SUBSCRIPTION)
            for a in accounts
            for n in range(instances_per_account)
        )

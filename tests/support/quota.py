"""Shared helpers of the quota tests: linking, reading a pool, counting what a change writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from tests.support.api import Api
from uidhub.db import Database
from uidhub.models import AuditEntry, IdempotencyRecord, LedgerEntry, QuotaAdjustment, QuotaPool

QUOTA_FIELDS = (
    "amount consumedDeducted consumedUndeducted available outstandingAmount "
    "warningThresholdPercent warningLevel belowWarningLevel account { uid }"
)
PAYLOAD = f"quota {{ {QUOTA_FIELDS} }} userErrors {{ code message field }}"

SET_AMOUNT = f"mutation($i: SetQuotaAmountInput!) {{ setQuotaAmount(input: $i) {{ {PAYLOAD} }} }}"
SET_THRESHOLD = f"mutation($i: SetWarningThresholdInput!) {{ setWarningThreshold(input: $i) {{ {PAYLOAD} }} }}"
RECORD = f"mutation($i: AmountInput!) {{ recordConsumption(input: $i) {{ {PAYLOAD} }} }}"
DEDUCT = f"mutation($i: AmountInput!) {{ deductConsumption(input: $i) {{ {PAYLOAD} }} }}"
REPAY = f"mutation($i: AmountInput!) {{ repayOutstanding(input: $i) {{ {PAYLOAD} }} }}"
BALANCE = {
    "record": (RECORD, "recordConsumption"),
    "deduct": (DEDUCT, "deductConsumption"),
    "repay": (REPAY, "repayOutstanding"),
}


async def quota(api: Api, uid: str, as_: str = "admin") -> dict[str, Any]:
    data = await api.gql(f'{{ endUser(uid: "{uid}") {{ quota {{ {QUOTA_FIELDS} }} }} }}', as_=as_)
    return data["endUser"]["quota"]


async def set_amount(api: Api, uid: str, amount: str, key: str | None = None, **kw: Any) -> dict[str, Any]:
    variables = {"i": {"uid": uid, "amount": amount, "idempotencyKey": key}}
    return (await api.gql(SET_AMOUNT, variables, **kw))["setQuotaAmount"]


async def balance(api: Api, op: str, uid: str, amount: str | int, key: str, **kw: Any) -> dict[str, Any]:
    query, name = BALANCE[op]
    return (await api.gql(query, {"i": {"uid": uid, "amount": amount, "idempotencyKey": key}}, **kw))[name]


async def counts(db: Database) -> dict[str, int]:
    """Rows of every table a quota change may write."""
    async with db.read() as session:
        out = {}
        for name, model in (
            ("adjustments", QuotaAdjustment),
            ("audit", AuditEntry),
            ("ledger", LedgerEntry),
            ("keys", IdempotencyRecord),
        ):
            out[name] = int(await session.scalar(select(func.count()).select_from(model)) or 0)
        return out


async def pools(db: Database) -> list[tuple[int, int, int, int | None]]:
    async with db.read() as session:
        rows = await session.execute(
            select(
                QuotaPool.amount_cents, QuotaPool.deducted_cents, QuotaPool.undeducted_cents, QuotaPool.warning_percent
            ).order_by(QuotaPool.id)
        )
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


async def snapshot(api: Api) -> tuple[Any, ...]:
    """Everything a refused change must leave as it was."""
    return (await pools(api.db), await counts(api.db))


async def partner_row(db: Database, uid: str = "P-MAIN") -> Any:
    from uidhub.models import Partner

    async with db.read() as session:
        return await session.scalar(select(Partner).where(Partner.uid == uid))


async def change_status(api: Api, uid: str, *statuses: str) -> list[dict[str, Any]]:
    out = []
    for status in statuses:
        data = await api.gql(
            "mutation($i: ChangeAccountStatusInput!) { changeAccountStatus(input: $i) "
            "{ endUser { accountStatus } userErrors { code message } } }",
            {"i": {"uid": uid, "status": status}},
        )
        out.append(data["changeAccountStatus"])
    return out

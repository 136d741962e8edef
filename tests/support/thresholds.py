"""Helpers shared by the alert threshold tests (no tests here): the GraphQL operations and small readers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from tests.support.api import Api
from uidhub.models import Account, AlertEvent, AuditEntry, LedgerEntry, QuotaPool, QuotaThreshold
from uidhub.models.enums import LedgerKind, OperationMethod

THRESHOLD_FIELDS = "id kind value amount severity recipients action requiresApproval breached"

ADD = f"""
mutation($input: AddQuotaThresholdInput!) {{
  addQuotaThreshold(input: $input) {{
    quota {{ available thresholds {{ {THRESHOLD_FIELDS} }} }}
    userErrors {{ code message field }}
  }}
}}
"""

UPDATE = f"""
mutation($input: UpdateQuotaThresholdInput!) {{
  updateQuotaThreshold(input: $input) {{
    quota {{ thresholds {{ {THRESHOLD_FIELDS} }} }}
    userErrors {{ code message field }}
  }}
}}
"""

REMOVE = f"""
mutation($id: ID!) {{
  removeQuotaThreshold(input: {{id: $id}}) {{
    quota {{ warningThresholdPercent thresholds {{ {THRESHOLD_FIELDS} }} }}
    userErrors {{ code message field }}
  }}
}}
"""

CONSUME = """
mutation($uid: String!, $amount: Money!, $key: String!) {
  recordConsumption(input: {uid: $uid, amount: $amount, idempotencyKey: $key}) {
    quota { available } userErrors { code message }
  }
}
"""

REPAY = """
mutation($uid: String!, $amount: Money!, $key: String!) {
  deductConsumption(input: {uid: $uid, amount: $amount, idempotencyKey: $key}) { userErrors { code message } }
}
"""

EVENTS = """
query {
  alertEvents(first: 50) {
    edges { node { kind state account { uid } available threshold thresholdId thresholdKind severity daysLeft } }
  }
}
"""

PENDING = """
query($status: PendingActionStatus) {
  pendingActions(status: $status) {
    totalCount
    edges { node { id action status severity thresholdId account { uid } decidedBy } }
  }
}
"""

DECIDE = """
mutation($id: ID!) {
  %s(input: {id: $id}) {
    pendingAction { id status action decidedBy }
    userErrors { code message field }
  }
}
"""

POLICY = """
query($uid: String!) {
  endUser(uid: $uid) {
    policy { purchaseControl effectivePurchaseControl paygFreezeStatus effectivePaygFreezeStatus }
  }
}
"""

_keys = iter(range(1, 1_000_000))


async def add(
    api: Api, uid: str, *, as_: str = "admin", token: str | None = None, errors: bool = False, **threshold: Any
) -> dict[str, Any]:
    """addQuotaThreshold; asserts success (and returns the new threshold) unless `errors`."""
    data = await api.gql(ADD, {"input": {"uid": uid, "threshold": threshold}}, as_=as_, token=token, errors=errors)
    if errors:
        return data
    payload = data["addQuotaThreshold"]
    assert payload["userErrors"] == [], payload
    return payload["quota"]["thresholds"][-1]


async def consume(api: Api, uid: str, amount: str) -> str:
    """recordConsumption through the API; the available amount after it."""
    data = await api.gql(CONSUME, {"uid": uid, "amount": amount, "key": f"k-{next(_keys)}"})
    assert data["recordConsumption"]["userErrors"] == [], data
    return data["recordConsumption"]["quota"]["available"]


async def unconsume(api: Api, uid: str, cents: int) -> None:
    """Lower consumed-undeducted directly, then evaluate like a change of the pool (a refund has no mutation)."""
    from uidhub.resolvers.pools import after_pool_change, lock_pool

    async with api.db.write() as session:
        account = await session.scalar(select(Account).where(Account.uid == uid))
        assert account is not None
        await session.execute(
            update(QuotaPool)
            .where(QuotaPool.id == account.pool_id)
            .values(undeducted_cents=QuotaPool.undeducted_cents - cents)
        )
        pool = await lock_pool(session, account.pool_id)
        await after_pool_change(session, pool, None)


async def event_rows(api: Api) -> list[AlertEvent]:
    async with api.db.read() as session:
        return list((await session.scalars(select(AlertEvent).order_by(AlertEvent.id))).all())


async def audit_rows(api: Api, *actions: str) -> list[tuple[str, str, str, int | None]]:
    """(action, account uid, method, cascade-from account id) of the entries with these actions, oldest first."""
    async with api.db.read() as session:
        rows = (
            await session.execute(
                select(AuditEntry, Account.uid)
                .join(Account, Account.id == AuditEntry.account_id)
                .where(AuditEntry.action.in_(actions))
                .order_by(AuditEntry.id)
            )
        ).all()
    return [(e.action.value, uid, e.method.value, e.cascade_from_id) for e, uid in rows]


async def threshold_count(api: Api) -> int:
    async with api.db.read() as session:
        return len((await session.scalars(select(QuotaThreshold.id))).all())


async def backdated_spend(api: Api, uid: str, cents: int, age: timedelta, *, move_pool: bool = True) -> None:
    """A consumption ledger row `age` ago (and the pool's undeducted, unless told not to), with no evaluation.

    This is what the ledger looks like after spending that no evaluation has looked at since (the forecast
    window is what moves with time).
    """
    async with api.db.write() as session:
        account = await session.scalar(select(Account).where(Account.uid == uid))
        assert account is not None
        session.add(
            LedgerEntry(
                pool_id=account.pool_id,
                account_id=account.id,
                kind=LedgerKind.CONSUMPTION,
                amount_cents=cents,
                occurred_at=datetime.now(UTC) - age,
                method=OperationMethod.API,
            )
        )
        if move_pool:
            await session.execute(
                update(QuotaPool)
                .where(QuotaPool.id == account.pool_id)
                .values(undeducted_cents=QuotaPool.undeducted_cents + cents)
            )

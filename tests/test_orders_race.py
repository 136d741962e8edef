"""Freezing a master while its sub-accounts place PAYG orders concurrently (SQLite and PostgreSQL).

Audit ids follow commit order (notifications.log), so an allowed order that
committed after the freeze would have an ORDER_PLACED entry with an id above
the master's PAYG_FROZEN entry. There must be none.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from tests.support.accounts import link
from tests.support.api import Api
from tests.support.policy import freeze, order
from uidhub.models import Account, AuditEntry, Instance
from uidhub.models.enums import AuditAction, BillingMethod

SUBS = 8
WORKERS = 16
AFTER_FREEZE = 2


async def test_no_payg_order_commits_after_the_masters_freeze(api: Api) -> None:
    await link(api, "RM", quotaAmount="100.00")
    for i in range(SUBS):
        await link(api, f"RM-S{i}", masterUid="RM")

    results: list[dict[str, object]] = []
    keys = iter(range(1_000_000))
    first_allowed = asyncio.Event()
    frozen = asyncio.Event()

    async def worker(w: int) -> None:
        # Orders keep flowing until the freeze has committed, and a few more after it.
        after = 0
        while after < AFTER_FREEZE:
            if frozen.is_set():
                after += 1
            payload = await order(api, f"RM-S{w % SUBS}", "PAYG", "1.00", key=f"race-{next(keys)}")
            results.append(payload)
            if payload["decision"]["allowed"]:  # type: ignore[index]
                first_allowed.set()

    async def freeze_while_orders_flow() -> dict[str, object]:
        await first_allowed.wait()
        await asyncio.sleep(0.05)  # let more orders get in flight (not an assertion)
        payload = await freeze(api, ["RM"], reason="race")
        frozen.set()
        return payload

    outcome = await asyncio.gather(freeze_while_orders_flow(), *(worker(w) for w in range(WORKERS)))
    assert outcome[0]["applied"] is True

    allowed = [r for r in results if r["decision"]["allowed"]]  # type: ignore[index]
    denied = [r for r in results if not r["decision"]["allowed"]]  # type: ignore[index]
    assert all(r["userErrors"] == [] for r in results)
    assert all(r["decision"]["reasons"] == ["PAYG_FROZEN"] for r in denied)  # type: ignore[index]
    assert allowed and len(denied) >= WORKERS * (AFTER_FREEZE - 1)

    async with api.db.read() as session:
        master_id = await session.scalar(select(Account.id).where(Account.uid == "RM"))
        freeze_id = await session.scalar(
            select(AuditEntry.id).where(
                AuditEntry.account_id == master_id, AuditEntry.action == AuditAction.PAYG_FROZEN
            )
        )
        order_ids = (
            await session.scalars(select(AuditEntry.id).where(AuditEntry.action == AuditAction.ORDER_PLACED))
        ).all()
        instances = await session.scalar(
            select(func.count(Instance.id)).where(Instance.billing_method == BillingMethod.PAYG)
        )
    assert freeze_id is not None
    assert len(order_ids) == len(allowed) == instances
    late_orders = [i for i in order_ids if i > freeze_id]
    assert late_orders == [], f"{len(late_orders)} PAYG orders committed after the freeze"
    print(f"race: {len(allowed)} allowed before the freeze, {len(denied)} denied after it")

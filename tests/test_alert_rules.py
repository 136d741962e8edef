"""`QuotaPool.alert_rules`: how many alert rules watch a pool, kept by triggers (migration 0006).

It must equal the pool's thresholds plus the enabled credit alerts of its accounts after every change of
either, on both databases; a balance change on a pool with none reads no rule at all, and one on a pool with
rules still evaluates them (a credit alert set on a sub-account, which spends from its master's pool).
"""

from __future__ import annotations

from sqlalchemy import func, select

from tests.support.accounts import link
from tests.support.alerts import set_credit_alert
from tests.support.api import Api
from tests.support.db import StatementCounter
from tests.support.quota import SET_THRESHOLD
from tests.support.thresholds import REMOVE, add, consume, event_rows
from uidhub.models import Account, CreditAlert, QuotaPool, QuotaThreshold


async def _rules(api: Api, uid: str) -> tuple[int, int]:
    """(stored count, recount from the rows) of the pool `uid` spends from."""
    async with api.db.read() as session:
        pool_id = await session.scalar(select(Account.pool_id).where(Account.uid == uid))
        stored = await session.scalar(select(QuotaPool.alert_rules).where(QuotaPool.id == pool_id))
        thresholds = await session.scalar(
            select(func.count()).select_from(QuotaThreshold).where(QuotaThreshold.pool_id == pool_id)
        )
        alerts = await session.scalar(
            select(func.count())
            .select_from(CreditAlert)
            .where(CreditAlert.pool_id == pool_id, CreditAlert.enabled.is_(True))
        )
    return int(stored or 0), int(thresholds or 0) + int(alerts or 0)


async def _expect(api: Api, uid: str, count: int) -> None:
    stored, recount = await _rules(api, uid)
    assert (stored, recount) == (count, count)


async def test_the_count_follows_every_rule_change(api: Api) -> None:
    await link(api, "M1", quotaAmount="100.00")
    await link(api, "S1", masterUid="M1")
    await link(api, "U2", quotaAmount="100.00")
    await _expect(api, "M1", 0)
    floor = await add(api, "M1", kind="AVAILABLE_BELOW", amount="10.00")
    await _expect(api, "M1", 1)
    data = await api.gql(SET_THRESHOLD, {"i": {"uid": "M1", "percent": 30}})
    assert data["setWarningThreshold"]["userErrors"] == []
    await _expect(api, "M1", 2)
    await set_credit_alert(api, "S1", "50.00")  # the sub-account's alert watches its master's pool
    await set_credit_alert(api, "M1", "40.00")
    await _expect(api, "M1", 4)
    await set_credit_alert(api, "S1", "50.00", enabled=False)
    await _expect(api, "M1", 3)
    await set_credit_alert(api, "S1", "60.00", enabled=False)  # disabled stays uncounted
    await _expect(api, "M1", 3)
    await set_credit_alert(api, "S1", "60.00")
    await _expect(api, "M1", 4)
    removed = await api.gql(REMOVE, {"id": floor["id"]})
    assert removed["removeQuotaThreshold"]["userErrors"] == []
    await _expect(api, "M1", 3)
    data = await api.gql(SET_THRESHOLD, {"i": {"uid": "M1", "percent": None}})
    assert data["setWarningThreshold"]["userErrors"] == []
    await _expect(api, "M1", 2)
    await _expect(api, "U2", 0)  # another pool is untouched by all of it


async def test_a_balance_change_reads_rules_only_where_there_are_some(api: Api) -> None:
    await link(api, "M1", quotaAmount="100.00")
    await link(api, "S1", masterUid="M1")
    with StatementCounter(api.db) as counter:
        assert await consume(api, "S1", "1.00") == "99.00"
    assert not [s for s in counter.statements if "quota_thresholds" in s or "credit_alerts" in s]

    await set_credit_alert(api, "S1", "90.00")
    with StatementCounter(api.db) as counter:
        assert await consume(api, "S1", "10.00") == "89.00"
    assert [s for s in counter.statements if "quota_thresholds" in s]
    breached = [e for e in await event_rows(api) if e.state.value == "BREACHED"]
    assert [(e.kind.value, e.threshold_cents) for e in breached] == [("CREDIT_ALERT", 9_000)]

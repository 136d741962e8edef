"""How many SQL statements a balance operation runs (BEGIN/COMMIT not counted), pinned per database.

A balance call is the hottest write and every statement is a round trip, the later ones with the pool row
locked. Kept (tests/test_quota.py and tests/test_quota_concurrency.py test the rules themselves): the key
claim first, the account read FOR SHARE, one atomic guarded UPDATE, its ledger row, the stored first result,
credit control and the alert evaluation, all in one transaction. On PostgreSQL the key claim and the account
read are one statement, and the UPDATE, the ledger row and the stored result another (data-modifying CTEs); the
thresholds and whether the pool has credit alerts are one query, read only when the pool's rule count (returned
by the UPDATE) is not 0, and the credit alerts themselves only when there are some.
"""

from __future__ import annotations

from sqlalchemy import func, select

from tests.support.accounts import link
from tests.support.api import Api
from tests.support.db import StatementCounter
from tests.support.quota import set_amount
from uidhub.models import Account, IdempotencyRecord, LedgerEntry, QuotaPool
from uidhub.resolvers.pool_amounts import PoolResult, snapshot

#: The payload reads nothing beyond the pool the mutation returns, so every statement counted is the mutation's.
MUTATION = (
    "mutation($i: AmountInput!) {{ {op}(input: $i) {{ quota {{ available consumedDeducted consumedUndeducted }} "
    "userErrors {{ code }} }} }}"
)
OPS = {"record": "recordConsumption", "deduct": "deductConsumption", "repay": "repayOutstanding"}
#: Statements per call. Before: SQLite 7 / 7 / 8, PostgreSQL 7 / 7 / 9 (repay adds its audit entry, and on
#: PostgreSQL the audit log's advisory lock); then SQLite 6 / 6 / 7 and PostgreSQL 4 / 4 / 6 before the claim
#: took the account read along, and before a pool without alert rules (`QuotaPool.alert_rules`, this one)
#: stopped reading them.
EXPECTED = {
    "sqlite": {"record": 5, "deduct": 5, "repay": 6},
    "postgresql": {"record": 2, "deduct": 2, "repay": 4},
}


async def _call(api: Api, op: str, amount: str, key: str) -> dict:
    data = await api.gql(MUTATION.format(op=OPS[op]), {"i": {"uid": "U1", "amount": amount, "idempotencyKey": key}})
    return data[OPS[op]]


async def test_balance_operations_run_the_pinned_number_of_statements(api: Api) -> None:
    await link(api, "U1")
    await set_amount(api, "U1", "100.00")
    dialect = api.db.engine.dialect.name
    got = {}
    for op, amount in (("record", "30.00"), ("deduct", "20.00"), ("repay", "5.00")):
        with StatementCounter(api.db) as counter:
            result = await _call(api, op, amount, f"key-{op}")
        assert result["userErrors"] == [], result
        # The token lookup is the request's, not the mutation's (and the token cache may answer it).
        got[op] = len([s for s in counter.statements if "api_tokens" not in s])
    assert got == EXPECTED[dialect], got
    assert result["quota"] == {"available": "75.00", "consumedDeducted": "15.00", "consumedUndeducted": "10.00"}

    # What the folded statement wrote: one ledger row per call, each key's stored result replays the same answer.
    async with api.db.read() as session:
        kinds = (await session.scalars(select(LedgerEntry.kind).order_by(LedgerEntry.id))).all()
        assert [k.value for k in kinds] == ["CONSUMPTION", "DEDUCTION", "REPAYMENT"]
        stored = await session.scalar(select(IdempotencyRecord.response).where(IdempotencyRecord.key == "key-record"))
        assert stored is not None and stored["undeducted"] == 30_00 and stored["deducted"] == 0
        pool = await session.scalar(select(QuotaPool))
        assert pool is not None
        # Whichever path stored it (SQL on PostgreSQL, Python on SQLite), it is what `snapshot` would store.
        owner = await session.scalar(select(Account.id).where(Account.uid == "U1"))
        expected = snapshot(PoolResult(pool=pool, owner_id=owner))
        assert stored == {**expected, "deducted": 0, "undeducted": 30_00}
    again = await _call(api, "record", "30.00", "key-record")
    assert again["quota"] == {"available": "70.00", "consumedDeducted": "0.00", "consumedUndeducted": "30.00"}
    async with api.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(LedgerEntry)) == 3


async def test_a_refused_deduction_writes_no_ledger_row_and_frees_its_key(api: Api) -> None:
    await link(api, "U1")
    await set_amount(api, "U1", "100.00")
    refused = await _call(api, "deduct", "1.00", "k-refused")
    assert [e["code"] for e in refused["userErrors"]] == ["INVALID_INPUT"]
    async with api.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(LedgerEntry)) == 0
        assert await session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0

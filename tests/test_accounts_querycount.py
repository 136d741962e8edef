"""No N+1: a page of 10 and a page of 100 cost the same number of SQL statements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from tests.support.api import Api
from tests.support.db import StatementCounter
from uidhub.models import Account, AuditEntry, Partner, QuotaAdjustment, QuotaPool
from uidhub.models.enums import AccountStatus, AccountType, AuditAction, OperationMethod, QuotaOperationType, Role

QUERY = """query($first: Int!) { endUsers(first: $first) { totalCount
  edges { cursor node {
    uid nickname accountStatus
    partner { uid kind }
    master { uid nickname master { uid } }
    subAccounts { uid accountStatus }
    policy { paygFreezeStatus effectivePaygFreezeStatus effectivePurchaseControl shutdownPolicy creditControlStatus }
    quota { amount available account { uid }
      adjustments(first: 2) { totalCount edges { node { value operator { uid } } } } }
    auditEntries(first: 3) { totalCount edges { node { action operator { uid } cascadeFrom { uid } account { uid } } }
      pageInfo { hasNextPage } }
  } }
  pageInfo { hasNextPage endCursor } } }"""


async def seed(api: Api, masters: int = 110, subs_per_master: int = 2) -> int:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    async with api.db.write() as session:
        partner = await session.scalar(select(Partner).where(Partner.uid == "P-MAIN"))
        assert partner is not None
        pools = [QuotaPool(partner_id=partner.id, amount_cents=10_000 * i) for i in range(masters)]
        session.add_all(pools)
        await session.flush()
        owners = [
            Account(
                partner_id=partner.id,
                uid=f"M{i:04d}",
                account_type=AccountType.ENTERPRISE,
                nickname=f"Master {i}",
                status=AccountStatus.NORMAL,
                pool_id=pools[i].id,
                linked_at=t0 + timedelta(minutes=3 * i),
            )
            for i in range(masters)
        ]
        session.add_all(owners)
        await session.flush()
        subs = [
            Account(
                partner_id=partner.id,
                uid=f"M{i:04d}-S{j}",
                account_type=AccountType.END_USER,
                status=AccountStatus.NORMAL,
                pool_id=pools[i].id,
                master_id=owners[i].id,
                linked_at=t0 + timedelta(minutes=3 * i + j + 1),
            )
            for i in range(masters)
            for j in range(subs_per_master)
        ]
        session.add_all(subs)
        await session.flush()
        entries = []
        for account in owners + subs:
            for k in range(5):
                entries.append(
                    AuditEntry(
                        partner_id=partner.id,
                        account_id=account.id,
                        action=AuditAction.BASIC_INFO_UPDATED,
                        method=OperationMethod.PLATFORM,
                        operator_uid="P-MAIN",
                        operator_name="main",
                        operator_role=Role.ADMIN,
                        before={"remarks": str(k)},
                        after={"remarks": str(k + 1)},
                        cascade_from_id=account.master_id,
                    )
                )
        session.add_all(entries)
        for i, pool in enumerate(pools):
            for k in range(3):  # three quota records per pool, newest last
                session.add(
                    QuotaAdjustment(
                        pool_id=pool.id,
                        operation_type=QuotaOperationType.QUOTA_ADJUSTMENT,
                        occurred_at=datetime.now(UTC) - timedelta(days=3 - k),
                        before_cents=k * 100,
                        value_cents=100,
                        after_cents=(k + 1) * 100 + i,
                        method=OperationMethod.PLATFORM,
                        operator_uid="P-MAIN",
                    )
                )
    return masters * (1 + subs_per_master)


async def test_statement_count_does_not_grow_with_page_size(api: Api) -> None:
    total = await seed(api)
    counts = {}
    for first in (10, 100):
        await api.gql(QUERY, {"first": first})  # warm-up (first-use reflection, prepared statements)
        with StatementCounter(api.db) as counter:
            data = await api.gql(QUERY, {"first": first})
        edges = data["endUsers"]["edges"]
        assert len(edges) == first and data["endUsers"]["totalCount"] == total
        # The nested data is really there.
        for edge in edges:
            node = edge["node"]
            assert node["partner"]["uid"] == "P-MAIN"
            assert node["auditEntries"]["totalCount"] == 5 and len(node["auditEntries"]["edges"]) == 3
            assert node["auditEntries"]["pageInfo"]["hasNextPage"] is True
            adjustments = node["quota"]["adjustments"]
            assert adjustments["totalCount"] == 3 and len(adjustments["edges"]) == 2
            assert adjustments["edges"][0]["node"]["value"] == "1.00"
            if "-S" in node["uid"]:
                assert node["master"]["uid"] == node["uid"].split("-")[0] and node["subAccounts"] == []
                assert node["quota"]["account"]["uid"] == node["master"]["uid"]
            else:
                assert node["master"] is None and len(node["subAccounts"]) == 2
        counts[first] = counter.count
    assert counts[10] > 3, "the counter sees the statements"
    assert counts[10] == counts[100], counts
    assert counts[100] <= 15, counter.statements


async def test_page_statements_are_built_once_per_viewer_filter_and_order(api: Api) -> None:
    """A list asked again reuses its statement (resolvers.accounts.page_statement); another viewer never does."""
    from uidhub.resolvers.accounts import page_statement

    await seed(api, masters=4, subs_per_master=1)
    query = """query($f: EndUserFilter, $after: String) {
      endUsers(first: 2, filter: $f, after: $after) { edges { node { uid } } pageInfo { endCursor } } }"""
    page_statement.cache_clear()
    first = await api.gql(query, {"f": {"includeSubAccounts": False}})
    again = await api.gql(query, {"f": {"includeSubAccounts": False}})
    assert first == again and page_statement.cache_info().hits >= 1
    # The next page: the same (viewer, filter, order) entry, its cursor in a statement not kept.
    after = first["endUsers"]["pageInfo"]["endCursor"]
    misses = page_statement.cache_info().misses
    second = await api.gql(query, {"f": {"includeSubAccounts": False}, "after": after})
    assert page_statement.cache_info().misses == misses
    uids = [e["node"]["uid"] for e in first["endUsers"]["edges"] + second["endUsers"]["edges"]]
    assert len(set(uids)) == 4 and all("-S" not in uid for uid in uids)
    # Another partner asking the very same list gets a statement of its own: none of P-MAIN's accounts.
    theirs = await api.gql(query, {"f": {"includeSubAccounts": False}}, as_="other")
    assert theirs["endUsers"]["edges"] == []
    assert page_statement.cache_info().misses == misses + 1

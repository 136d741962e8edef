"""On PostgreSQL, no `endUsers` shape (nor `summary`) scans accounts, pools or the listing sequentially.

Every statement the API runs for a shape is captured from the engine and EXPLAINed on the same database
with `enable_seqscan = off`: a sequential scan still appearing then means no index can serve the
statement at all (the planner only falls back to one when it has no other way), which is what would make
the shape cost O(accounts).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select, update

from tests.support.api import Api
from tests.test_accounts_querycount import seed
from uidhub.models import Account, Partner, QuotaPool
from uidhub.models.enums import AccountStatus, AccountType, PaygFreezeStatus

LIST = """query($first: Int, $after: String, $filter: EndUserFilter, $orderBy: EndUserOrder) {
  endUsers(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {
    totalCount edges { node { uid subAccounts { uid } } } pageInfo { endCursor } } }"""

SCANNED = ("accounts", "quota_pools", "account_listing")


def shapes() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    for field in ("LINKED_AT", "UID", "NICKNAME", "AVAILABLE_QUOTA"):
        for direction in ("ASC", "DESC"):
            out.append({"orderBy": {"field": field, "direction": direction}})
            out.append({"orderBy": {"field": field, "direction": direction}, "filter": {"includeSubAccounts": False}})
    filters: list[dict[str, Any]] = [
        {"search": "M0012"},  # a UID prefix
        {"search": "zzqqxx"},  # matches nothing
        {"search": "aster 7"},  # a nickname substring (listed from its candidates: a WITH … MATERIALIZED)
        {"search": "m"},  # a short term (scans the partner's rows in list order, through the index)
        {"accountStatuses": ["NORMAL"]},
        {"accountTypes": ["ENTERPRISE"]},
        {"paygFreezeStatus": "FROZEN"},
        {"paygFreezeStatus": "NORMAL"},
        {"purchaseControl": "BANNED"},
        {"creditControlStatuses": ["SHUTDOWN"]},
        {"belowWarningLevel": True},
        {"businessManager": "Li"},
        {"linkedAfter": "2025-01-01T05:00:00Z"},
        {"uids": ["M0001", "M0002-S1"]},
    ]
    out += [{"filter": f} for f in filters]
    return out


async def explain_all(api: Api, statements: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(statement, plan) of the captured SELECTs, with sequential scans disabled."""
    plans = []
    async with api.db.engine.connect() as conn:
        await conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, params in statements:
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")):  # WITH: a search's candidates
                continue
            rows = (await conn.exec_driver_sql(f"EXPLAIN {statement}", params)).all()
            plans.append((statement, "\n".join(r[0] for r in rows)))
    return plans


async def test_no_list_shape_scans_sequentially(pg_api: Api) -> None:
    api = pg_api
    await seed(api, masters=300, subs_per_master=2)
    async with api.db.write() as session:
        partner_id = await session.scalar(select(Partner.id).where(Partner.uid == "P-MAIN"))
        await session.execute(
            update(Account).where(Account.uid.like("M001%")).values(payg_freeze=PaygFreezeStatus.FROZEN)
        )
        await session.execute(update(QuotaPool).where(QuotaPool.partner_id == partner_id).values(warning_percent=50))
        await session.execute(
            update(Account)
            .where(Account.uid.like("M002%"))
            .values(account_type=AccountType.RESELLER, business_manager="Li", status=AccountStatus.TO_BE_CONFIRMED)
        )
    async with api.db.engine.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")

    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        captured.append((statement, parameters))

    cursor = None
    checked = 0
    candidates_listed = False
    for variables in [*shapes(), {"after": "DEEP"}]:
        if variables.get("after") == "DEEP":
            variables = {"after": cursor, "first": 50}
        captured.clear()
        event.listen(api.db.engine.sync_engine, "before_cursor_execute", capture)
        try:
            data = await api.gql(LIST, {"first": 50, **variables})
            await api.gql("{ summary { accounts frozen totalAvailable } }")
        finally:
            event.remove(api.db.engine.sync_engine, "before_cursor_execute", capture)
        if not variables:
            cursor = data["endUsers"]["pageInfo"]["endCursor"]
        # With no condition but the partner (and masters only), the page must come in index order; a
        # flag filter or a search may instead sort the rows it matched (the planner's choice at this size).
        ordered = not set(variables.get("filter", {})) - {"includeSubAccounts"}
        # (Which index a search uses is the planner's choice by table size: at this size a filtered walk of
        # the primary key can be cheaper than the trigram bitmaps; bench/bench_scale.py shows them at scale.)
        searching = bool(variables.get("filter", {}).get("search"))
        for statement, plan in await explain_all(api, captured):
            candidates_listed = candidates_listed or "search_matches" in statement
            for table in SCANNED:
                assert f"Seq Scan on {table} " not in plan + " ", (variables, plan)
            if "FROM account_listing" in statement and "LIMIT" in statement and not searching:
                assert "ix_account_listing_" in plan, (variables, plan)
                if ordered:
                    assert "Sort" not in plan, (variables, plan)
            if "partner_account_counters" in statement:
                assert "accounts" not in plan, plan  # summary and counted totals never aggregate the accounts
            checked += 1
    assert checked > 2 * len(shapes())  # the list, its count and the summary of every shape were explained
    assert candidates_listed  # a selective search went through candidates_query


async def test_sqlite_walks_the_masters_only_index(sqlite_api: Api) -> None:
    """includeSubAccounts: false by link time or available quota walks the masters-only partial index on SQLite,
    whose planner otherwise walks the full index and skips sub-accounts: a page then read every sub-account
    linked after the newest master (41–47 ms at a million accounts against 0.4 ms)."""
    api = sqlite_api
    await seed(api, masters=30, subs_per_master=2)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        captured.append((statement, parameters))

    for field, index in (("LINKED_AT", "owner_linked"), ("AVAILABLE_QUOTA", "owner_available")):
        for direction in ("ASC", "DESC"):
            variables: dict[str, Any] = {
                "first": 5,
                "filter": {"includeSubAccounts": False},
                "orderBy": {"field": field, "direction": direction},
            }
            for _page in range(2):
                captured.clear()
                event.listen(api.db.engine.sync_engine, "before_cursor_execute", capture)
                try:
                    data = (await api.gql(LIST, variables))["endUsers"]
                finally:
                    event.remove(api.db.engine.sync_engine, "before_cursor_execute", capture)
                assert len(data["edges"]) == 5 and all("-S" not in e["node"]["uid"] for e in data["edges"])
                (statement, params), *_ = [(s, p) for s, p in captured if "FROM account_listing" in s and "LIMIT" in s]
                async with api.db.engine.connect() as conn:
                    rows = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)).all()
                plan = " ".join(str(r[3]) for r in rows)
                assert f"ix_account_listing_{index}" in plan, (variables, plan)
                variables["after"] = data["pageInfo"]["endCursor"]

"""Accounts through the GraphQL API, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select
from sqlalchemy.engine.default import CACHE_HIT

from tests.support.accounts import (
    audit_of,
    change_status,
    link,
    one,
    set_account,
    set_pool,
    update_info,
)
from tests.support.api import Api
from uidhub.models import Account, AuditEntry, QuotaPool
from uidhub.resolvers import accounts as accounts_resolvers


async def counts(api: Api) -> tuple[int, int, int]:
    async with api.db.read() as session:
        return (
            int(await session.scalar(select(func.count(Account.id))) or 0),
            int(await session.scalar(select(func.count(QuotaPool.id))) or 0),
            int(await session.scalar(select(func.count(AuditEntry.id))) or 0),
        )


# ---------------------------------------------------------------- linkAccount


async def test_link_standalone_and_sub_account(api: Api) -> None:
    payload = await link(
        api, "M1", nickname="Master", email="m1@example.com", accountType="ENTERPRISE", quotaAmount="100.00"
    )
    eu = payload["endUser"]
    assert eu["uid"] == "M1" and eu["accountType"] == "ENTERPRISE" and eu["email"] == "m1@example.com"
    assert eu["accountStatus"] == "NORMAL" and eu["master"] is None and eu["quota"]["amount"] == "100.00"

    sub = (await link(api, "S1", masterUid="M1"))["endUser"]
    assert sub["accountType"] == "END_USER"
    assert sub["master"] == {"uid": "M1"}
    assert sub["quota"]["amount"] == "100.00", "a sub-account spends from its master's pool"
    data = await api.gql('{ endUser(uid: "M1") { subAccounts { uid } } }')
    assert data["endUser"]["subAccounts"] == [{"uid": "S1"}]
    async with api.db.read() as session:
        pools = {a.uid: a.pool_id for a in (await session.scalars(select(Account))).all()}
    assert pools["M1"] == pools["S1"]


async def test_link_errors_change_nothing(api: Api) -> None:
    await link(api, "M1")
    await link(api, "S1", masterUid="M1")
    await link(api, "X1", as_="other")
    before = await counts(api)

    cases: list[tuple[dict[str, Any], str, list[str]]] = [
        ({"uid": "S2", "masterUid": "S1"}, "INVALID_INPUT", ["input", "masterUid"]),
        ({"uid": "S2", "masterUid": "X1"}, "NOT_FOUND", ["input", "masterUid"]),
        ({"uid": "S2", "masterUid": "NOPE"}, "NOT_FOUND", ["input", "masterUid"]),
        ({"uid": "M1"}, "ALREADY_LINKED", ["input", "uid"]),
        ({"uid": "X1"}, "ALREADY_LINKED", ["input", "uid"]),
        ({"uid": "S2", "masterUid": "M1", "quotaAmount": "5.00"}, "QUOTA_MANAGED_BY_MASTER", ["input", "quotaAmount"]),
        ({"uid": "S2", "nickname": "x" * 151}, "INVALID_INPUT", ["input", "nickname"]),
        ({"uid": "S2", "email": "not-an-email"}, "INVALID_INPUT", ["input", "email"]),
        ({"uid": " S2"}, "INVALID_INPUT", ["input", "uid"]),
    ]
    for fields, code, path in cases:
        payload = await link(api, expect_ok=False, **fields)
        assert payload["endUser"] is None, fields
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [(code, path)], fields
        assert payload["userErrors"][0]["message"]
    assert await counts(api) == before


async def test_master_cannot_become_sub_of_itself_or_others(api: Api) -> None:
    await link(api, "M1")
    await link(api, "M2")
    await link(api, "S1", masterUid="M1")
    # A master (already linked) cannot be re-linked as a sub-account: ALREADY_LINKED.
    payload = await link(api, "M1", masterUid="M2", expect_ok=False)
    assert [e["code"] for e in payload["userErrors"]] == ["ALREADY_LINKED"]
    data = await api.gql('{ endUser(uid: "M1") { master { uid } subAccounts { uid } } }')
    assert data["endUser"] == {"master": None, "subAccounts": [{"uid": "S1"}]}


async def test_link_under_terminated_master_is_not_active(api: Api) -> None:
    await link(api, "M1")
    await set_account(api, "M1", status="TERMINATED")
    payload = await link(api, "S1", masterUid="M1", expect_ok=False)
    assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [("ACCOUNT_NOT_ACTIVE", ["input", "masterUid"])]


# ---------------------------------------------------------------- updateBasicInfo


async def test_update_basic_info_limits(api: Api) -> None:
    await link(api, "U1", nickname="start")
    await update_info(api, "U1", businessManager="Zhang", remarks="r")

    ok_cases = [
        {"nickname": "云" * 50},  # 150 bytes
        {"nickname": "a" * 150},
        {"businessManager": "经" * 50},  # 50 characters, 150 bytes
        {"remarks": "备" * 1000},  # 3000 bytes
        {"remarks": "line one\nline\ttwo"},
        {"nickname": "  spaced  "},
    ]
    for fields in ok_cases:
        payload = await update_info(api, "U1", **fields)
        assert payload["userErrors"] == [], fields
        stored = await one(api, "U1")
        assert stored is not None
        for key, value in fields.items():
            assert payload["endUser"][key] == value
            assert stored[key] == value, "kept exactly, spaces included"

    before = await one(api, "U1")
    bad_cases = [
        ({"nickname": "云" * 51}, "nickname"),
        ({"nickname": "a" * 151}, "nickname"),
        ({"businessManager": "m" * 51}, "businessManager"),
        ({"remarks": "备" * 1000 + "x"}, "remarks"),
        ({"nickname": "bell\x07"}, "nickname"),
        ({"remarks": "cr\r"}, "remarks"),
        ({"businessManager": "nul\x00"}, "businessManager"),
        ({"nickname": "del\x7f"}, "nickname"),
    ]
    audit_before = len(await audit_of(api, "U1"))
    for fields, name in bad_cases:
        payload = (
            await update_info(api, "U1", **fields, remarks="would change")
            if "remarks" not in fields
            else (await update_info(api, "U1", **fields, nickname="would change"))
        )
        assert payload["endUser"] is None
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [("INVALID_INPUT", ["input", name])], fields
        assert await one(api, "U1") == before, "nothing changed"
    assert len(await audit_of(api, "U1")) == audit_before

    # Several bad fields: every one is named.
    payload = await update_info(api, "U1", nickname="x" * 151, remarks="\x01")
    assert {tuple(e["field"]) for e in payload["userErrors"]} == {("input", "nickname"), ("input", "remarks")}


async def test_update_basic_info_omitted_unchanged_null_clears(api: Api) -> None:
    await link(api, "U1", nickname="nick")
    await update_info(api, "U1", businessManager="bm", remarks="rem")
    payload = await update_info(api, "U1", remarks="new")
    assert payload["endUser"] == {"uid": "U1", "nickname": "nick", "businessManager": "bm", "remarks": "new"}
    payload = await update_info(api, "U1", nickname=None)
    assert payload["endUser"] == {"uid": "U1", "nickname": None, "businessManager": "bm", "remarks": "new"}
    assert (await one(api, "U1"))["nickname"] is None  # type: ignore[index]


async def test_update_basic_info_unknown_and_inactive(api: Api) -> None:
    payload = await update_info(api, "NOPE", nickname="x")
    assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [("NOT_FOUND", ["input", "uid"])]
    await link(api, "U1")
    await set_account(api, "U1", status="TERMINATED")
    payload = await update_info(api, "U1", nickname="x")
    assert [e["code"] for e in payload["userErrors"]] == ["ACCOUNT_NOT_ACTIVE"]


# ---------------------------------------------------------------- changeAccountStatus


async def test_termination_process_cascades(api: Api) -> None:
    await link(api, "M1")
    await link(api, "S1", masterUid="M1")
    await link(api, "S2", masterUid="M1")
    for status in ("TO_BE_CONFIRMED", "IN_PROCESS", "TERMINATED", "DELETED"):
        payload = await change_status(api, "M1", status)
        assert payload["userErrors"] == [], status
        assert payload["endUser"]["accountStatus"] == status
        for uid in ("S1", "S2"):
            assert (await one(api, uid) or {}).get("accountStatus") == status

    entries = await audit_of(api, "S1")
    statuses = [e for e in entries if e["action"] == "ACCOUNT_STATUS_CHANGED"]
    assert [e["after"]["accountStatus"] for e in statuses] == ["DELETED", "TERMINATED", "IN_PROCESS", "TO_BE_CONFIRMED"]
    assert all(e["cascadeFrom"] == {"uid": "M1"} for e in statuses)
    master_entries = [e for e in await audit_of(api, "M1") if e["action"] == "ACCOUNT_STATUS_CHANGED"]
    assert len(master_entries) == 4 and all(e["cascadeFrom"] is None for e in master_entries)
    assert master_entries[-1]["before"] == {"accountStatus": "NORMAL"}
    assert master_entries[-1]["after"] == {"accountStatus": "TO_BE_CONFIRMED"}


async def test_cancel_and_invalid_transitions(api: Api) -> None:
    await link(api, "M1")
    await link(api, "S1", masterUid="M1")
    assert (await change_status(api, "M1", "TO_BE_CONFIRMED"))["userErrors"] == []
    payload = await change_status(api, "M1", "NORMAL")  # cancelled
    assert payload["userErrors"] == [] and payload["endUser"]["subAccounts"] == [
        {"uid": "S1", "accountStatus": "NORMAL"}
    ]

    invalid = [("NORMAL", "IN_PROCESS"), ("NORMAL", "TERMINATED"), ("NORMAL", "DELETED"), ("NORMAL", "NORMAL")]
    for current, target in invalid:
        await set_account(api, "M1", status=current)
        payload = await change_status(api, "M1", target)
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [
            ("INVALID_STATUS_TRANSITION", ["input", "status"])
        ], (current, target)
    for current, target in [
        ("IN_PROCESS", "NORMAL"),
        ("TERMINATED", "NORMAL"),
        ("DELETED", "NORMAL"),
        ("TO_BE_CONFIRMED", "TERMINATED"),
        ("IN_PROCESS", "TO_BE_CONFIRMED"),
    ]:
        await set_account(api, "M1", status=current)
        payload = await change_status(api, "M1", target)
        assert [e["code"] for e in payload["userErrors"]] == ["INVALID_STATUS_TRANSITION"], (current, target)
        assert (await one(api, "M1") or {})["accountStatus"] == current
    payload = await change_status(api, "NOPE", "TO_BE_CONFIRMED")
    assert [e["code"] for e in payload["userErrors"]] == ["NOT_FOUND"]


@pytest.mark.parametrize(
    ("pool", "blocked"),
    [
        ({"amount_cents": 0, "deducted_cents": 100, "undeducted_cents": 0}, True),  # available < 0
        ({"amount_cents": 1000, "deducted_cents": 0, "undeducted_cents": 1}, True),  # undeducted > 0
        ({"amount_cents": 1000, "deducted_cents": 1000, "undeducted_cents": 0}, False),  # available == 0
    ],
)
async def test_outstanding_balance_blocks_termination(api: Api, pool: dict[str, int], blocked: bool) -> None:
    await link(api, "M1")
    await link(api, "S1", masterUid="M1")
    await change_status(api, "M1", "TO_BE_CONFIRMED")
    await change_status(api, "M1", "IN_PROCESS")
    await set_pool(api, "M1", **pool)
    # A sub-account's termination reads the pool it shares with its master.
    payload = await change_status(api, "S1", "TERMINATED")
    if blocked:
        errors = [(e["code"], e["field"]) for e in payload["userErrors"]]
        assert errors == [("OUTSTANDING_BALANCE", ["input", "status"])]
        assert (await one(api, "S1") or {})["accountStatus"] == "IN_PROCESS"
    else:
        assert payload["userErrors"] == []
    payload = await change_status(api, "M1", "TERMINATED")
    assert bool(payload["userErrors"]) is blocked
    assert (await one(api, "M1") or {})["accountStatus"] == ("IN_PROCESS" if blocked else "TERMINATED")


async def test_sub_account_status_change_does_not_touch_master(api: Api) -> None:
    await link(api, "M1")
    await link(api, "S1", masterUid="M1")
    await link(api, "S2", masterUid="M1")
    assert (await change_status(api, "S1", "TO_BE_CONFIRMED"))["userErrors"] == []
    assert (await one(api, "M1") or {})["accountStatus"] == "NORMAL"
    assert (await one(api, "S2") or {})["accountStatus"] == "NORMAL"


async def test_deleted_hidden_unless_asked(api: Api) -> None:
    await link(api, "A1")
    await link(api, "A2")
    await set_account(api, "A2", status="DELETED")
    data = await api.gql("{ endUsers { totalCount edges { node { uid } } } summary { accounts } }")
    assert [e["node"]["uid"] for e in data["endUsers"]["edges"]] == ["A1"]
    assert data["endUsers"]["totalCount"] == 1 and data["summary"]["accounts"] == 1
    data = await api.gql("{ endUsers(filter: {accountStatuses: [DELETED]}) { totalCount edges { node { uid } } } }")
    assert [e["node"]["uid"] for e in data["endUsers"]["edges"]] == ["A2"]
    data = await api.gql(
        "{ endUsers(filter: {accountStatuses: [NORMAL, DELETED]}, orderBy: {field: UID}) { edges { node { uid } } } }"
    )
    assert [e["node"]["uid"] for e in data["endUsers"]["edges"]] == ["A1", "A2"]
    assert (await one(api, "A2") or {})["accountStatus"] == "DELETED", "still readable by UID"


# ---------------------------------------------------------------- endUsers: filters

LIST = """query($filter: EndUserFilter, $orderBy: EndUserOrder, $first: Int, $after: String) {
  endUsers(filter: $filter, orderBy: $orderBy, first: $first, after: $after) {
    totalCount edges { cursor node { uid } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"""

T0 = datetime(2025, 1, 1, tzinfo=UTC)


async def listed(api: Api, filter: dict[str, Any] | None = None, order: dict[str, Any] | None = None) -> list[str]:
    data = await api.gql(LIST, {"filter": filter, "orderBy": order, "first": 100})
    uids = [e["node"]["uid"] for e in data["endUsers"]["edges"]]
    assert data["endUsers"]["totalCount"] == len(uids)
    return uids


async def seed_portfolio(api: Api) -> None:
    """M1 (frozen, banned master) with S1, S2; M2 (below warning, shutdown) with S3; A1..A3 standalone."""
    await link(api, "M1", nickname="alpha master", accountType="ENTERPRISE")
    await link(api, "S1", masterUid="M1", nickname="beta")
    await link(api, "S2", masterUid="M1")
    await link(api, "M2", nickname="Gamma", accountType="RESELLER")
    await link(api, "S3", masterUid="M2", nickname="delta")
    await link(api, "A1", nickname="epsilon 100%")
    await link(api, "A2", nickname="zeta_x")
    await link(api, "A3", nickname="eta")
    await link(api, "X1", as_="other", nickname="alpha other")
    await update_info(api, "A1", businessManager="Li Wei", remarks="Key ACCOUNT in Hangzhou")
    await update_info(api, "S3", businessManager="Li Wei")
    await update_info(api, "A2", businessManager="Li Weiwei")
    for i, uid in enumerate(["M1", "S1", "S2", "M2", "S3", "A1", "A2", "A3"]):
        await set_account(api, uid, linked_at=T0 + timedelta(days=i))
    await set_account(api, "M1", payg_freeze="FROZEN", purchase_control="BANNED")
    await set_account(api, "A3", payg_freeze="FROZEN")
    await set_account(api, "S3", purchase_control="BANNED")
    await set_pool(api, "M1", amount_cents=10_000)
    await set_pool(
        api, "M2", amount_cents=1_000, undeducted_cents=2_000, warning_percent=50, credit_control_status="SHUTDOWN"
    )
    await set_pool(
        api,
        "A1",
        amount_cents=1_000,
        undeducted_cents=400,
        warning_percent=50,
        credit_control_status="ARREARS_NOT_SHUTDOWN",
    )
    await set_pool(api, "A2", amount_cents=1_000, undeducted_cents=500, warning_percent=50)  # exactly at level


async def test_every_filter(api: Api) -> None:
    await seed_portfolio(api)
    everyone = {"M1", "S1", "S2", "M2", "S3", "A1", "A2", "A3"}
    assert set(await listed(api)) == everyone
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"search": "m"}, {"M1", "M2"}),  # UID prefix, case-insensitive
        ({"search": "S3"}, {"S3"}),
        ({"search": "ALPHA"}, {"M1"}),  # nickname substring, not another partner's
        ({"search": "amma"}, {"M2"}),
        ({"search": "hangzhou"}, {"A1"}),  # remarks
        ({"search": "100%"}, {"A1"}),  # LIKE wildcards are literal
        ({"search": "a_x"}, {"A2"}),
        ({"search": "_"}, {"A2"}),
        ({"uids": ["A1", "S3", "X1", "NOPE"]}, {"A1", "S3"}),
        ({"uids": []}, set()),
        ({"accountTypes": ["ENTERPRISE", "RESELLER"]}, {"M1", "M2"}),
        ({"accountTypes": ["END_USER"]}, {"S1", "S2", "S3", "A1", "A2", "A3"}),
        ({"accountStatuses": ["NORMAL"]}, everyone),
        ({"accountStatuses": ["TERMINATED"]}, set()),
        ({"paygFreezeStatus": "FROZEN"}, {"M1", "S1", "S2", "A3"}),
        ({"paygFreezeStatus": "NORMAL"}, {"M2", "S3", "A1", "A2"}),
        ({"purchaseControl": "BANNED"}, {"M1", "S1", "S2", "S3"}),
        ({"purchaseControl": "NORMAL"}, {"M2", "A1", "A2", "A3"}),
        ({"creditControlStatuses": ["SHUTDOWN"]}, {"M2", "S3"}),
        ({"creditControlStatuses": ["ARREARS_NOT_SHUTDOWN", "SHUTDOWN"]}, {"M2", "S3", "A1"}),
        ({"creditControlStatuses": ["NORMAL"]}, {"M1", "S1", "S2", "A2", "A3"}),
        ({"belowWarningLevel": True}, {"M2", "S3"}),
        ({"belowWarningLevel": False}, {"M1", "S1", "S2", "A1", "A2", "A3"}),
        ({"businessManager": "Li Wei"}, {"A1", "S3"}),  # exact, not a prefix
        ({"linkedAfter": (T0 + timedelta(days=5)).isoformat()}, {"A1", "A2", "A3"}),
        ({"linkedBefore": (T0 + timedelta(days=2)).isoformat()}, {"M1", "S1"}),
        ({"linkedAfter": (T0 + timedelta(days=1)).isoformat(), "linkedBefore": "2025-01-03T08:00:00+08:00"}, {"S1"}),
        ({"includeSubAccounts": False}, {"M1", "M2", "A1", "A2", "A3"}),
        ({"includeSubAccounts": True}, everyone),
        ({"includeSubAccounts": False, "paygFreezeStatus": "FROZEN", "search": "m"}, {"M1"}),
    ]
    for filter, expected in cases:
        assert set(await listed(api, filter)) == expected, filter


async def test_uids_filter_limited_to_100(api: Api) -> None:
    body = await api.gql(LIST, {"filter": {"uids": [f"U{i}" for i in range(101)]}}, errors=True)
    assert body["errors"] and body["data"] is None
    assert await listed(api, {"uids": [f"U{i}" for i in range(100)]}) == []


# ---------------------------------------------------------------- endUsers: order and pagination


async def seed_for_order(api: Api) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    specs = [
        ("B02", "kiwi", 0, 500),
        ("A07", None, 1, 500),
        ("C11", "apple", 1, -200),
        ("A01", "kiwi", 2, 0),
        ("D09", "banana", 2, 500),
        ("B05", "apple", 3, 10_000),
        ("C03", None, 4, 0),
    ]
    for uid, nickname, day, available in specs:
        await link(api, uid, nickname=nickname)
        await set_account(api, uid, linked_at=T0 + timedelta(days=day))
        await set_pool(api, uid, amount_cents=max(available, 0), deducted_cents=max(-available, 0))
        rows[uid] = {"LINKED_AT": day, "UID": uid, "NICKNAME": nickname or "", "AVAILABLE_QUOTA": available}
    await link(api, "S99", masterUid="B05", nickname="kiwi")  # shares B05's pool
    await set_account(api, "S99", linked_at=T0 + timedelta(days=2))
    rows["S99"] = {"LINKED_AT": 2, "UID": "S99", "NICKNAME": "kiwi", "AVAILABLE_QUOTA": 10_000}
    return rows


def expected_order(rows: dict[str, dict[str, Any]], field: str, descending: bool) -> list[str]:
    return sorted(rows, key=lambda uid: (rows[uid][field], uid), reverse=descending)


async def test_every_order_both_directions_and_pagination(api: Api) -> None:
    rows = await seed_for_order(api)
    # Default: LINKED_AT descending, then UID.
    assert await listed(api) == expected_order(rows, "LINKED_AT", True)
    for field in ("LINKED_AT", "UID", "NICKNAME", "AVAILABLE_QUOTA"):
        for direction in ("ASC", "DESC"):
            order = {"field": field, "direction": direction}
            expected = expected_order(rows, field, direction == "DESC")
            assert await listed(api, None, order) == expected, order
            # Walk every page of 3: same list, no gaps, no repeats.
            walked: list[str] = []
            after = None
            pages = 0
            while True:
                data = (await api.gql(LIST, {"orderBy": order, "first": 3, "after": after}))["endUsers"]
                assert data["totalCount"] == len(rows)
                walked += [e["node"]["uid"] for e in data["edges"]]
                info = data["pageInfo"]
                assert info["hasPreviousPage"] is (after is not None)
                assert info["startCursor"] == data["edges"][0]["cursor"]
                assert info["endCursor"] == data["edges"][-1]["cursor"]
                pages += 1
                if not info["hasNextPage"]:
                    break
                after = info["endCursor"]
                assert pages < 10
            assert walked == expected, order
            assert pages == 3
    # ASC is the default direction.
    assert await listed(api, None, {"field": "UID"}) == expected_order(rows, "UID", False)


@pytest.mark.parametrize("candidates_max", [20_000, 0])
async def test_search_pages_in_every_order(api: Api, candidates_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search paginates like the list in every order, with an exact totalCount: on PostgreSQL both from its
    candidates (a selective term) and by walking the order's index (past SEARCH_CANDIDATES_MAX matches)."""
    monkeypatch.setattr(accounts_resolvers, "SEARCH_CANDIDATES_MAX", candidates_max)
    rows = await seed_for_order(api)
    for term in ("kiw", "ppl"):  # three accounts (one a sub-account sharing its master's pool), two
        expected_rows = {uid: row for uid, row in rows.items() if term in row["NICKNAME"]}
        for field in ("LINKED_AT", "UID", "NICKNAME", "AVAILABLE_QUOTA"):
            for direction in ("ASC", "DESC"):
                order = {"field": field, "direction": direction}
                walked: list[str] = []
                after = None
                while True:
                    variables = {"filter": {"search": term}, "orderBy": order, "first": 2, "after": after}
                    data = (await api.gql(LIST, variables))["endUsers"]
                    assert data["totalCount"] == len(expected_rows), (term, order)
                    walked += [e["node"]["uid"] for e in data["edges"]]
                    if not data["pageInfo"]["hasNextPage"]:
                        break
                    after = data["pageInfo"]["endCursor"]
                    assert len(walked) <= len(expected_rows)
                assert walked == expected_order(expected_rows, field, direction == "DESC"), (term, order)


async def test_a_search_statement_is_compiled_once_per_shape(api: Api) -> None:
    """Terms of the same shape (length ≥ 3, as many UID case spellings) run one cached statement, each with
    its own values: nickname substrings and UID prefixes alike (those are inlined at execution). Before,
    `SearchMatch` opted out of SQLAlchemy's compiled cache and every search request compiled its whole
    statement again (about a third of a search request)."""
    for uid, nickname in (("U1", "kiwi fruit"), ("U2", "lime pie"), ("U3", "kiwano"), ("ABC1", None), ("XYZ1", None)):
        await link(api, uid, nickname=nickname)
    seen: list[Any] = []

    def record(_c: Any, _cur: Any, statement: str, _p: Any, context: Any, _many: bool) -> None:
        if context is not None and ("ILIKE" in statement or "account_search" in statement):
            seen.append(context.cache_hit)

    event.listen(api.db.engine.sync_engine, "after_cursor_execute", record)
    try:
        # Four letters, 16 ASCII case spellings each: one shape.
        assert set(await listed(api, {"search": "kiwi"})) == {"U1"}
        first = len(seen)
        assert set(await listed(api, {"search": "lime"})) == {"U2"}
        assert set(await listed(api, {"search": "KIWA"})) == {"U3"}
        middle = len(seen)
        # Three letters (8 spellings), matched by UID prefix only.
        assert set(await listed(api, {"search": "abc"})) == {"ABC1"}
        third = len(seen)
        assert set(await listed(api, {"search": "xyz"})) == {"XYZ1"}
    finally:
        event.remove(api.db.engine.sync_engine, "after_cursor_execute", record)
    assert first > 0, "no search statement seen"
    assert seen[first:middle] and all(hit is CACHE_HIT for hit in seen[first:middle]), seen
    assert seen[third:] and all(hit is CACHE_HIT for hit in seen[third:]), seen


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12), term=st.text(min_size=1, max_size=4))
def test_sqlite_like_ignores_case_as_lower_like_does(text: str, term: str) -> None:
    """SQLite's search narrowing compares `x LIKE p` instead of `lower(x) LIKE p` (no new string per row):
    the same verdict for any text, because SQLite's LIKE ignores ASCII case and its lower() folds nothing else."""
    pattern = "%" + accounts_resolvers._escape_like(term.lower()) + "%"
    with closing(sqlite3.connect(":memory:")) as conn:
        plain, folded = conn.execute(
            "SELECT ? LIKE ? ESCAPE '\\', lower(?) LIKE ? ESCAPE '\\'", (text, pattern, text, pattern)
        ).fetchone()
    assert plain == folded


async def test_cursor_stays_valid_while_rows_are_added(api: Api) -> None:
    for i in range(5):
        await link(api, f"U{i}")
    order = {"field": "UID", "direction": "ASC"}
    first = (await api.gql(LIST, {"orderBy": order, "first": 2}))["endUsers"]
    await link(api, "U0a")  # sorts before the cursor
    rest = (await api.gql(LIST, {"orderBy": order, "first": 10, "after": first["pageInfo"]["endCursor"]}))["endUsers"]
    assert [e["node"]["uid"] for e in rest["edges"]] == ["U2", "U3", "U4"]


async def test_pagination_errors(api: Api) -> None:
    await link(api, "U1")
    bad_cursors = ["not-a-cursor", "", "eyJ4IjoxfQ", "WyJhdWRpdCIsMV0"]  # garbage, empty, {"x":1}, ["audit",1]
    for cursor in bad_cursors:
        body = await api.gql(LIST, {"after": cursor}, errors=True)
        assert body["data"] is None and body["errors"], cursor
    # A cursor of one order is refused by another.
    uid_cursor = (await api.gql(LIST, {"orderBy": {"field": "UID"}, "first": 1}))["endUsers"]["edges"][0]["cursor"]
    body = await api.gql(LIST, {"after": uid_cursor}, errors=True)
    assert body["errors"]
    body = await api.gql(LIST, {"first": 101}, errors=True)
    assert body["data"] is None and "100" in body["errors"][0]["message"]
    body = await api.gql(LIST, {"first": -1}, errors=True)
    assert body["errors"]
    data = await api.gql(LIST, {"first": 100})
    assert data["endUsers"]["totalCount"] == 1
    data = await api.gql(LIST, {"first": 0})
    assert data["endUsers"]["edges"] == [] and data["endUsers"]["pageInfo"]["hasNextPage"] is True


# ---------------------------------------------------------------- summary, viewer, node


async def test_summary(api: Api) -> None:
    data = await api.gql(
        "{ summary { accounts frozen purchaseBanned shutdown belowWarningLevel totalQuota "
        "totalAvailable totalOutstanding } }"
    )
    assert data["summary"] == {
        "accounts": 0,
        "frozen": 0,
        "purchaseBanned": 0,
        "shutdown": 0,
        "belowWarningLevel": 0,
        "totalQuota": "0.00",
        "totalAvailable": "0.00",
        "totalOutstanding": "0.00",
    }
    await seed_portfolio(api)
    await link(api, "GONE")
    await set_pool(api, "GONE", amount_cents=99_999)
    await set_account(api, "GONE", status="DELETED")
    data = await api.gql(
        "{ summary { accounts frozen purchaseBanned shutdown belowWarningLevel totalQuota "
        "totalAvailable totalOutstanding } }"
    )
    # Pools: M1 100.00, M2 10.00-20.00, A1 10.00-4.00, A2 10.00-5.00, A3 0.
    assert data["summary"] == {
        "accounts": 8,
        "frozen": 4,
        "purchaseBanned": 4,
        "shutdown": 2,
        "belowWarningLevel": 2,
        "totalQuota": "130.00",
        "totalAvailable": "101.00",
        "totalOutstanding": "10.00",
    }
    other = await api.gql("{ summary { accounts totalQuota } }", as_="other")
    assert other["summary"] == {"accounts": 1, "totalQuota": "0.00"}


async def test_viewer(api: Api) -> None:
    data = await api.gql(
        "{ viewer { operator { uid name isRamAccount role } partner { id uid name kind alertEmails } method } }"
    )
    viewer = data["viewer"]
    assert viewer["operator"] == {"uid": "P-MAIN", "name": "Partner P-MAIN", "isRamAccount": False, "role": "ADMIN"}
    assert viewer["partner"]["uid"] == "P-MAIN" and viewer["partner"]["kind"] == "DISTRIBUTOR"
    assert viewer["partner"]["alertEmails"] == ["ops@example.com"]
    assert viewer["method"] == "PLATFORM"
    partner_q = "query($id: ID!) { node(id: $id) { ... on Partner { uid } } }"
    node = await api.gql(partner_q, {"id": viewer["partner"]["id"]})
    assert node["node"] == {"uid": "P-MAIN"}
    node = await api.gql("query($id: ID!) { node(id: $id) { id } }", {"id": viewer["partner"]["id"]}, as_="other")
    assert node["node"] is None


async def test_node_round_trips(api: Api) -> None:
    eu = (await link(api, "U1", nickname="n"))["endUser"]
    data = await api.gql(
        "query($id: ID!) { node(id: $id) { id __typename ... on EndUser { uid nickname } } }", {"id": eu["id"]}
    )
    assert data["node"] == {"id": eu["id"], "__typename": "EndUser", "uid": "U1", "nickname": "n"}
    entry = (await api.gql('{ auditEntries(uid: "U1") { edges { node { id action } } } }'))["auditEntries"]["edges"][0]
    data = await api.gql(
        "query($id: ID!) { node(id: $id) { id ... on AuditEntry { action account { uid } } } }",
        {"id": entry["node"]["id"]},
    )
    assert data["node"] == {"id": entry["node"]["id"], "action": "ACCOUNT_LINKED", "account": {"uid": "U1"}}
    for garbage in ["", "nope", "RW5kVXNlcjo5OTk5OQ", "RW5kVXNlcjp4"]:  # EndUser:99999, EndUser:x
        assert (await api.gql("query($id: ID!) { node(id: $id) { id } }", {"id": garbage}))["node"] is None

"""Quota pools through the GraphQL API: the credit line, its history, consumption, idempotency, lists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.support.accounts import link
from tests.support.api import Api, make_partner, make_token
from tests.support.quota import SET_THRESHOLD, balance, change_status, counts, partner_row, quota, set_amount, snapshot
from uidhub.models import IdempotencyRecord, LedgerEntry, QuotaAdjustment
from uidhub.models.enums import LedgerKind, OperationMethod, PartnerKind, Role
from uidhub.resolvers.quota import purge_expired

ADJUSTMENTS = """
query($uid: String!, $first: Int, $after: String, $since: DateTime, $until: DateTime, $op: QuotaOperationType) {
  endUser(uid: $uid) { quota { adjustments(first: $first, after: $after, since: $since, until: $until,
                                           operationType: $op) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage endCursor }
    edges { cursor node { id operationType operationTime before value after method
                          operator { uid name isRamAccount role } } }
  } } }
}
"""


async def adjustments(api: Api, uid: str, as_: str = "admin", **args: Any) -> dict[str, Any]:
    data = await api.gql(ADJUSTMENTS, {"uid": uid, **args}, as_=as_)
    return data["endUser"]["quota"]["adjustments"]


async def audit_actions(api: Api, uid: str) -> list[str]:
    data = await api.gql(
        "query($u: String!) { auditEntries(uid: $u, first: 100) { edges { node { action } } } }", {"u": uid}
    )
    return [e["node"]["action"] for e in data["auditEntries"]["edges"]]


# ---------------------------------------------------------------- the credit line and its history


async def test_create_adjust_and_same_amount(api: Api) -> None:
    await link(api, "U1")
    q = await quota(api, "U1")
    assert q["amount"] == "0.00" and q["available"] == "0.00" and q["warningLevel"] is None
    assert (await adjustments(api, "U1"))["totalCount"] == 0

    payload = await set_amount(api, "U1", "100.00")
    assert payload["userErrors"] == []
    assert payload["quota"]["amount"] == "100.00" and payload["quota"]["available"] == "100.00"
    assert payload["quota"]["account"]["uid"] == "U1"

    before = await counts(api.db)
    payload = await set_amount(api, "U1", "100")  # the same amount: no record, no audit entry
    assert payload["userErrors"] == [] and payload["quota"]["amount"] == "100.00"
    assert await counts(api.db) == before

    await set_amount(api, "U1", "80.5")
    page = await adjustments(api, "U1")
    assert page["totalCount"] == 2
    newest, first = (e["node"] for e in page["edges"])
    assert (first["operationType"], first["before"], first["value"], first["after"]) == (
        "QUOTA_CREATE",
        "0.00",
        "100.00",
        "100.00",
    )
    assert (newest["operationType"], newest["before"], newest["value"], newest["after"]) == (
        "QUOTA_ADJUSTMENT",
        "100.00",
        "-19.50",
        "80.50",
    )
    for node in (first, newest):
        assert node["method"] == "PLATFORM"
        assert node["operator"] == {"uid": "P-MAIN", "name": "Partner P-MAIN", "isRamAccount": False, "role": "ADMIN"}
        assert datetime.fromisoformat(node["operationTime"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert [a for a in await audit_actions(api, "U1") if a != "CREDIT_CONTROL_CHANGED"] == [
        "QUOTA_ADJUSTED",
        "QUOTA_CREATED",
        "ACCOUNT_LINKED",
    ]


async def test_link_with_quota_is_the_create_record(api: Api) -> None:
    await link(api, "U1", quotaAmount="0.00")
    page = await adjustments(api, "U1")
    assert [e["node"]["operationType"] for e in page["edges"]] == ["QUOTA_CREATE"]
    before = await counts(api.db)
    await set_amount(api, "U1", "0")  # 0.00 was set: the same amount again
    assert await counts(api.db) == before
    await set_amount(api, "U1", "1.00")
    page = await adjustments(api, "U1")
    assert [e["node"]["operationType"] for e in page["edges"]] == ["QUOTA_ADJUSTMENT", "QUOTA_CREATE"]
    assert page["edges"][0]["node"]["before"] == "0.00"


async def test_first_amount_zero_on_a_never_set_pool_is_a_create(api: Api) -> None:
    await link(api, "U1")
    await set_amount(api, "U1", "0")
    page = await adjustments(api, "U1")
    assert [(e["node"]["operationType"], e["node"]["after"]) for e in page["edges"]] == [("QUOTA_CREATE", "0.00")]


async def test_api_token_and_ram_operator_are_recorded(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    partner = await partner_row(api.db)
    token = await make_token(
        api.db, partner, Role.OPERATOR, method=OperationMethod.API, is_ram=True, operator_uid="RAM-7"
    )
    payload = await set_amount(api, "U1", "20.00", token=token)
    assert payload["userErrors"] == []
    node = (await adjustments(api, "U1"))["edges"][0]["node"]
    assert node["method"] == "API"
    assert node["operator"]["uid"] == "RAM-7" and node["operator"]["isRamAccount"] is True
    assert node["operator"]["role"] == "OPERATOR"
    data = await api.gql('{ auditEntries(uid: "U1", first: 1) { edges { node { action method } } } }')
    assert data["auditEntries"]["edges"][0]["node"] == {"action": "QUOTA_ADJUSTED", "method": "API"}


async def test_adjustments_pagination_and_filters(api: Api) -> None:
    await link(api, "U1", quotaAmount="1.00")
    for amount in ("2.00", "3.00", "4.00", "5.00"):
        await set_amount(api, "U1", amount)
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = await adjustments(api, "U1", first=2, after=after)
        assert page["totalCount"] == 5
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        seen += [e["node"]["after"] for e in page["edges"]]
        pages += 1
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]
    assert pages == 3
    assert seen == ["5.00", "4.00", "3.00", "2.00", "1.00"]  # newest first

    created = await adjustments(api, "U1", op="QUOTA_CREATE")
    assert created["totalCount"] == 1 and created["edges"][0]["node"]["after"] == "1.00"
    assert (await adjustments(api, "U1", op="QUOTA_ADJUSTMENT"))["totalCount"] == 4

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert (await adjustments(api, "U1", since=future))["totalCount"] == 0
    assert (await adjustments(api, "U1", until=past))["totalCount"] == 0
    assert (await adjustments(api, "U1", since=past, until=future))["totalCount"] == 5

    # A record older than six months drops out of the default window but not of an explicit one.
    async with api.db.write() as session:
        oldest = await session.scalar(select(QuotaAdjustment).order_by(QuotaAdjustment.id).limit(1))
        assert oldest is not None
        oldest.occurred_at = datetime.now(UTC) - timedelta(days=200)
    assert (await adjustments(api, "U1"))["totalCount"] == 4
    long_ago = (datetime.now(UTC) - timedelta(days=365)).isoformat()
    assert (await adjustments(api, "U1", since=long_ago))["totalCount"] == 5

    body = await api.gql(ADJUSTMENTS, {"uid": "U1", "first": 101}, errors=True)
    assert body.get("errors")


async def test_adjustment_node_is_only_visible_to_its_partner(api: Api) -> None:
    await link(api, "U1", quotaAmount="1.00")
    node_id = (await adjustments(api, "U1"))["edges"][0]["node"]["id"]
    query = "query($id: ID!) { node(id: $id) { id ... on QuotaAdjustment { after } } }"
    assert (await api.gql(query, {"id": node_id}))["node"] == {"id": node_id, "after": "1.00"}
    assert (await api.gql(query, {"id": node_id}, as_="other"))["node"] is None


# ---------------------------------------------------------------- sub-accounts


async def test_sub_account_spends_from_its_masters_pool(api: Api) -> None:
    await link(api, "M1", quotaAmount="100.00")
    await link(api, "S1", masterUid="M1")
    sub = await quota(api, "S1")
    assert sub["account"]["uid"] == "M1" and sub["amount"] == "100.00"
    payload = await balance(api, "record", "S1", "7.25", "k1")
    assert payload["userErrors"] == []
    assert payload["quota"]["account"]["uid"] == "M1"
    assert (await quota(api, "M1"))["consumedUndeducted"] == "7.25"
    assert (await quota(api, "S1"))["available"] == "92.75"
    async with api.db.read() as session:
        entry = await session.scalar(select(LedgerEntry))
        assert entry is not None and entry.kind is LedgerKind.CONSUMPTION and entry.amount_cents == 725
    data = await api.gql('{ endUser(uid: "S1") { quota { adjustments { totalCount } } } }')
    assert data["endUser"]["quota"]["adjustments"]["totalCount"] == 1  # the master's records


# ---------------------------------------------------------------- consumption, deduction, repayment


async def test_record_deduct_repay(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    await api.gql(SET_THRESHOLD, {"i": {"uid": "U1", "percent": 50}})
    p = (await balance(api, "record", "U1", "12.00", "r1"))["quota"]
    assert (p["consumedUndeducted"], p["available"], p["outstandingAmount"]) == ("12.00", "-2.00", "2.00")
    assert p["belowWarningLevel"] is True and p["warningLevel"] == "5.00"
    p = (await balance(api, "deduct", "U1", "12.00", "d1"))["quota"]
    assert (p["consumedUndeducted"], p["consumedDeducted"], p["available"]) == ("0.00", "12.00", "-2.00")
    p = (await balance(api, "repay", "U1", "2.00", "p1"))["quota"]
    assert (p["consumedDeducted"], p["available"], p["outstandingAmount"]) == ("10.00", "0.00", "0.00")
    actions = [a for a in await audit_actions(api, "U1") if a != "CREDIT_CONTROL_CHANGED"]  # SYSTEM entries
    # Consumption and deduction are not audited; the repayment and the threshold change are.
    assert actions == ["OUTSTANDING_REPAID", "WARNING_THRESHOLD_CHANGED", "QUOTA_CREATED", "ACCOUNT_LINKED"]
    data = await api.gql(
        '{ auditEntries(uid: "U1", actions: [OUTSTANDING_REPAID]) { edges { node { before after } } } }'
    )
    entry = data["auditEntries"]["edges"][0]["node"]
    assert entry["before"]["consumedDeducted"] == "12.00" and entry["before"]["outstandingAmount"] == "2.00"
    assert entry["after"]["consumedDeducted"] == "10.00" and entry["after"]["outstandingAmount"] == "0.00"
    async with api.db.read() as session:
        kinds = [
            (e.kind, e.amount_cents, e.idempotency_key)
            for e in await session.scalars(select(LedgerEntry).order_by(LedgerEntry.id))
        ]
    assert kinds == [
        (LedgerKind.CONSUMPTION, 1200, "r1"),
        (LedgerKind.DEDUCTION, 1200, "d1"),
        (LedgerKind.REPAYMENT, 200, "p1"),
    ]


async def test_billing_role_records_and_deducts_but_may_not_repay_or_set(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    token = await make_token(api.db, await partner_row(api.db), Role.BILLING, method=OperationMethod.API)
    assert (await balance(api, "record", "U1", "1.00", "b1", token=token))["userErrors"] == []
    assert (await balance(api, "deduct", "U1", "1.00", "b2", token=token))["userErrors"] == []
    before = await snapshot(api)
    for body in (
        await api.gql(
            'mutation { repayOutstanding(input: {uid: "U1", amount: "1", idempotencyKey: "b3"}) '
            "{ userErrors { code } } }",
            token=token,
            errors=True,
        ),
        await api.gql(
            'mutation { setQuotaAmount(input: {uid: "U1", amount: "1"}) { userErrors { code } } }',
            token=token,
            errors=True,
        ),
        await api.gql(
            'mutation { setWarningThreshold(input: {uid: "U1", percent: 5}) { userErrors { code } } }',
            token=token,
            errors=True,
        ),
    ):
        assert body["data"] is None
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert await snapshot(api) == before


@pytest.mark.parametrize("role", [Role.VIEWER, Role.END_USER])
async def test_read_only_roles_are_forbidden(api: Api, role: Role) -> None:
    await link(api, "U1", quotaAmount="10.00")
    token = await make_token(
        api.db, await partner_row(api.db), role, account_uid="U1" if role is Role.END_USER else None
    )
    before = await snapshot(api)
    for mutation in (
        'setQuotaAmount(input: {uid: "U1", amount: "1"})',
        'setWarningThreshold(input: {uid: "U1", percent: 5})',
        'recordConsumption(input: {uid: "U1", amount: "1", idempotencyKey: "x"})',
        'deductConsumption(input: {uid: "U1", amount: "1", idempotencyKey: "y"})',
        'repayOutstanding(input: {uid: "U1", amount: "1", idempotencyKey: "z"})',
    ):
        body = await api.gql(f"mutation {{ {mutation} {{ userErrors {{ code }} }} }}", token=token, errors=True)
        assert body["data"] is None and body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
    assert await snapshot(api) == before
    # Reading is fine, and an END_USER sees its own pool.
    assert (await quota(api, "U1", as_="admin"))["amount"] == "10.00"


async def test_agency_partner_may_not_touch_quota(api: Api) -> None:
    agency = await make_partner(api.db, "P-AGENCY", PartnerKind.AGENCY)
    token = await make_token(api.db, agency, Role.ADMIN)
    data = await api.gql('mutation { linkAccount(input: {uid: "A1"}) { userErrors { code } } }', token=token)
    assert data["linkAccount"]["userErrors"] == []
    before = await snapshot(api)
    for mutation in (
        'setQuotaAmount(input: {uid: "A1", amount: "1"})',
        'recordConsumption(input: {uid: "A1", amount: "1", idempotencyKey: "x"})',
        'repayOutstanding(input: {uid: "A1", amount: "1", idempotencyKey: "z"})',
    ):
        body = await api.gql(f"mutation {{ {mutation} {{ userErrors {{ code }} }} }}", token=token, errors=True)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert await snapshot(api) == before


# ---------------------------------------------------------------- every userError changes nothing


async def _prepared(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    await link(api, "S1", masterUid="U1")
    await link(api, "T1", quotaAmount="5.00")
    await link(api, "D1", quotaAmount="5.00")
    await link(api, "X1", quotaAmount="5.00", as_="other")
    await change_status(api, "T1", "TO_BE_CONFIRMED", "IN_PROCESS", "TERMINATED")
    await change_status(api, "D1", "TO_BE_CONFIRMED", "IN_PROCESS", "TERMINATED", "DELETED")
    await balance(api, "record", "U1", "3.00", "used-record")
    await balance(api, "deduct", "U1", "1.00", "used-deduct")
    await set_amount(api, "U1", "10.00", key="used-set")


ERROR_CASES: list[tuple[str, str, dict[str, Any], str, list[str]]] = [
    # (name, operation, input, code, field)
    ("negative amount", "set", {"uid": "U1", "amount": "-1"}, "INVALID_INPUT", ["input", "amount"]),
    ("unknown uid", "set", {"uid": "NOPE", "amount": "1"}, "NOT_FOUND", ["input", "uid"]),
    ("another partner's", "set", {"uid": "X1", "amount": "1"}, "NOT_FOUND", ["input", "uid"]),
    ("sub-account", "set", {"uid": "S1", "amount": "1"}, "QUOTA_MANAGED_BY_MASTER", ["input", "uid"]),
    ("terminated", "set", {"uid": "T1", "amount": "1"}, "ACCOUNT_NOT_ACTIVE", ["input", "uid"]),
    ("deleted", "set", {"uid": "D1", "amount": "1"}, "ACCOUNT_NOT_ACTIVE", ["input", "uid"]),
    (
        "key conflict",
        "set",
        {"uid": "U1", "amount": "11", "idempotencyKey": "used-set"},
        "IDEMPOTENCY_CONFLICT",
        ["input", "idempotencyKey"],
    ),
    (
        "empty key",
        "set",
        {"uid": "U1", "amount": "11", "idempotencyKey": ""},
        "INVALID_INPUT",
        ["input", "idempotencyKey"],
    ),
    ("threshold 0", "threshold", {"uid": "U1", "percent": 0}, "INVALID_INPUT", ["input", "percent"]),
    ("threshold 101", "threshold", {"uid": "U1", "percent": 101}, "INVALID_INPUT", ["input", "percent"]),
    ("threshold -5", "threshold", {"uid": "U1", "percent": -5}, "INVALID_INPUT", ["input", "percent"]),
    ("threshold sub", "threshold", {"uid": "S1", "percent": 5}, "QUOTA_MANAGED_BY_MASTER", ["input", "uid"]),
    ("threshold unknown", "threshold", {"uid": "NOPE", "percent": 5}, "NOT_FOUND", ["input", "uid"]),
    ("threshold terminated", "threshold", {"uid": "T1", "percent": 5}, "ACCOUNT_NOT_ACTIVE", ["input", "uid"]),
]
for op in ("record", "deduct", "repay"):
    ERROR_CASES += [
        (f"{op} zero", op, {"uid": "U1", "amount": "0", "idempotencyKey": "n1"}, "INVALID_INPUT", ["input", "amount"]),
        (
            f"{op} negative",
            op,
            {"uid": "U1", "amount": "-1", "idempotencyKey": "n1"},
            "INVALID_INPUT",
            ["input", "amount"],
        ),
        (f"{op} unknown", op, {"uid": "NOPE", "amount": "1", "idempotencyKey": "n1"}, "NOT_FOUND", ["input", "uid"]),
        (
            f"{op} other partner",
            op,
            {"uid": "X1", "amount": "1", "idempotencyKey": "n1"},
            "NOT_FOUND",
            ["input", "uid"],
        ),
        (
            f"{op} terminated",
            op,
            {"uid": "T1", "amount": "1", "idempotencyKey": "n1"},
            "ACCOUNT_NOT_ACTIVE",
            ["input", "uid"],
        ),
        (
            f"{op} deleted",
            op,
            {"uid": "D1", "amount": "1", "idempotencyKey": "n1"},
            "ACCOUNT_NOT_ACTIVE",
            ["input", "uid"],
        ),
        (
            f"{op} key used by another op/input",
            op,
            {"uid": "U1", "amount": "0.01", "idempotencyKey": "used-record"}
            if op != "record"
            else {"uid": "U1", "amount": "0.02", "idempotencyKey": "used-record"},
            "IDEMPOTENCY_CONFLICT",
            ["input", "idempotencyKey"],
        ),
        (
            f"{op} key too long",
            op,
            {"uid": "U1", "amount": "1", "idempotencyKey": "k" * 201},
            "INVALID_INPUT",
            ["input", "idempotencyKey"],
        ),
    ]
ERROR_CASES += [
    (
        "deduct more than undeducted",
        "deduct",
        {"uid": "U1", "amount": "2.01", "idempotencyKey": "n2"},
        "INVALID_INPUT",
        ["input", "amount"],
    ),
    (
        "repay more than deducted",
        "repay",
        {"uid": "U1", "amount": "1.01", "idempotencyKey": "n3"},
        "INVALID_INPUT",
        ["input", "amount"],
    ),
    (
        "deduct via sub more than undeducted",
        "deduct",
        {"uid": "S1", "amount": "5", "idempotencyKey": "n4"},
        "INVALID_INPUT",
        ["input", "amount"],
    ),
]

MUTATION = {
    "set": ("SetQuotaAmountInput", "setQuotaAmount"),
    "threshold": ("SetWarningThresholdInput", "setWarningThreshold"),
    "record": ("AmountInput", "recordConsumption"),
    "deduct": ("AmountInput", "deductConsumption"),
    "repay": ("AmountInput", "repayOutstanding"),
}


@pytest.mark.parametrize(("name", "op", "input_", "code", "field"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
async def test_user_error_changes_nothing(
    api: Api, name: str, op: str, input_: dict[str, Any], code: str, field: list[str]
) -> None:
    await _prepared(api)
    before = await snapshot(api)
    input_type, mutation = MUTATION[op]
    data = await api.gql(
        f"mutation($i: {input_type}!) {{ {mutation}(input: $i) {{ quota {{ amount }} userErrors {{ code field }} }} }}",
        {"i": input_},
    )
    assert data[mutation] == {"quota": None, "userErrors": [{"code": code, "field": field}]}, name
    assert await snapshot(api) == before
    # The failed call reserved no key: the same key with a valid input works afterwards.
    if input_.get("idempotencyKey") == "n1" and op == "record":
        assert (await balance(api, "record", "U1", "1.00", "n1"))["userErrors"] == []


async def test_in_process_accounts_still_settle(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    await change_status(api, "U1", "TO_BE_CONFIRMED", "IN_PROCESS")
    assert (await balance(api, "record", "U1", "1.00", "a"))["userErrors"] == []
    assert (await balance(api, "deduct", "U1", "1.00", "b"))["userErrors"] == []
    assert (await balance(api, "repay", "U1", "1.00", "c"))["userErrors"] == []
    assert (await set_amount(api, "U1", "12.00"))["userErrors"] == []
    data = await api.gql(SET_THRESHOLD, {"i": {"uid": "U1", "percent": 20}})
    assert data["setWarningThreshold"]["userErrors"] == []


# ---------------------------------------------------------------- idempotency


async def test_repeat_returns_the_first_payload_and_changes_nothing(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    first = await balance(api, "record", "U1", "2.00", "key-1")
    await balance(api, "record", "U1", "3.00", "key-2")
    before = await snapshot(api)
    again = await balance(api, "record", "U1", "2", "key-1")  # same input ("2" is 2.00)
    assert again == first
    assert again["quota"]["consumedUndeducted"] == "2.00"  # the first result, not today's 5.00
    assert await snapshot(api) == before
    assert (await quota(api, "U1"))["consumedUndeducted"] == "5.00"


async def test_repeat_of_a_deduct_and_repay_and_set(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    await balance(api, "record", "U1", "4.00", "r")
    first_deduct = await balance(api, "deduct", "U1", "4.00", "d")
    first_repay = await balance(api, "repay", "U1", "1.00", "p")
    first_set = await set_amount(api, "U1", "20.00", key="s")
    before = await snapshot(api)
    assert await balance(api, "deduct", "U1", "4.00", "d") == first_deduct  # would be INVALID_INPUT now
    assert await balance(api, "repay", "U1", "1.00", "p") == first_repay
    assert await set_amount(api, "U1", "20.00", key="s") == first_set
    assert await snapshot(api) == before


async def test_keys_are_per_partner_and_per_operation(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    await link(api, "X1", quotaAmount="10.00", as_="other")
    assert (await balance(api, "record", "U1", "1.00", "shared"))["userErrors"] == []
    assert (await balance(api, "record", "X1", "1.00", "shared", as_="other"))["userErrors"] == []
    conflict = await balance(api, "deduct", "U1", "1.00", "shared")
    assert conflict["userErrors"][0]["code"] == "IDEMPOTENCY_CONFLICT"
    other_uid = await balance(api, "record", "X1", "1.00", "shared")  # same key, another account: other input
    assert other_uid["userErrors"][0]["code"] in ("IDEMPOTENCY_CONFLICT", "NOT_FOUND")


async def test_purge_removes_keys_older_than_the_ttl(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    await balance(api, "record", "U1", "1.00", "old")
    await balance(api, "record", "U1", "1.00", "new")
    async with api.db.write() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == "old")
            .values(created_at=datetime.now(UTC) - timedelta(hours=api.settings.idempotency_ttl_hours + 1))
        )
    assert await purge_expired(api.db, api.settings) == 1
    async with api.db.read() as session:
        assert list(await session.scalars(select(IdempotencyRecord.key))) == ["new"]
    # The purged key is free again; the kept one still replays.
    assert (await balance(api, "record", "U1", "1.00", "old"))["quota"]["consumedUndeducted"] == "3.00"
    assert (await balance(api, "record", "U1", "1.00", "new"))["quota"]["consumedUndeducted"] == "2.00"


# ---------------------------------------------------------------- warning threshold


async def test_warning_threshold(api: Api) -> None:
    await link(api, "U1", quotaAmount="0.05")
    p = (await api.gql(SET_THRESHOLD, {"i": {"uid": "U1", "percent": 10}}))["setWarningThreshold"]
    assert p["userErrors"] == [] and p["quota"]["warningThresholdPercent"] == 10
    assert p["quota"]["warningLevel"] == "0.01"  # 0.005 rounds half up
    assert p["quota"]["belowWarningLevel"] is False
    before = await counts(api.db)
    await api.gql(SET_THRESHOLD, {"i": {"uid": "U1", "percent": 10}})  # same value: nothing written
    assert await counts(api.db) == before
    await balance(api, "record", "U1", "0.05", "k")
    assert (await quota(api, "U1"))["belowWarningLevel"] is True
    p = (await api.gql(SET_THRESHOLD, {"i": {"uid": "U1", "percent": None}}))["setWarningThreshold"]
    assert p["quota"]["warningThresholdPercent"] is None and p["quota"]["warningLevel"] is None
    assert p["quota"]["belowWarningLevel"] is False
    data = await api.gql(
        '{ auditEntries(uid: "U1", actions: [WARNING_THRESHOLD_CHANGED]) { edges { node { before after } } } }'
    )
    assert [(e["node"]["before"], e["node"]["after"]) for e in data["auditEntries"]["edges"]] == [
        ({"warningThresholdPercent": 10}, {"warningThresholdPercent": None}),
        ({"warningThresholdPercent": None}, {"warningThresholdPercent": 10}),
    ]


async def test_threshold_calls_after_pool_change(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from uidhub.resolvers import pools

    seen: list[int | None] = []

    async def spy(_session: Any, pool: Any, **_options: Any) -> None:
        seen.append(pool.warning_percent)

    monkeypatch.setattr(pools, "evaluate_pool", spy)
    await link(api, "U1", quotaAmount="10.00")
    seen.clear()
    await api.gql(SET_THRESHOLD, {"i": {"uid": "U1", "percent": 30}})
    await balance(api, "record", "U1", "1.00", "k")
    assert seen == [30, 30]


# ---------------------------------------------------------------- termination


async def test_termination_is_refused_while_money_is_open(api: Api) -> None:
    await link(api, "U1", quotaAmount="1.00")
    await change_status(api, "U1", "TO_BE_CONFIRMED", "IN_PROCESS")
    await balance(api, "record", "U1", "3.00", "r")

    async def terminate() -> dict[str, Any]:
        return (await change_status(api, "U1", "TERMINATED"))[0]

    before = await snapshot(api)
    result = await terminate()
    assert result["userErrors"][0]["code"] == "OUTSTANDING_BALANCE"  # undeducted 3.00
    assert await snapshot(api) == before
    await balance(api, "deduct", "U1", "3.00", "d")
    result = await terminate()
    assert result["userErrors"][0]["code"] == "OUTSTANDING_BALANCE"  # available -2.00
    await balance(api, "repay", "U1", "2.00", "p")
    result = await terminate()
    assert result["userErrors"] == [] and result["endUser"]["accountStatus"] == "TERMINATED"


async def test_termination_of_a_master_counts_consumption_of_its_subs(api: Api) -> None:
    await link(api, "M1", quotaAmount="10.00")
    await link(api, "S1", masterUid="M1")
    await change_status(api, "M1", "TO_BE_CONFIRMED", "IN_PROCESS")
    await balance(api, "record", "S1", "0.01", "r")
    assert (await change_status(api, "M1", "TERMINATED"))[0]["userErrors"][0]["code"] == "OUTSTANDING_BALANCE"


# ---------------------------------------------------------------- list, order and summary


async def test_below_warning_filter_available_order_and_summary(api: Api) -> None:
    await link(api, "A", quotaAmount="100.00")  # available 100, threshold 50%: above
    await link(api, "B", quotaAmount="100.00")  # available 40, threshold 50%: below
    await link(api, "C", quotaAmount="10.00")  # available -5 (outstanding 5), no threshold
    await link(api, "BS", masterUid="B")  # shares B's pool
    await link(api, "X", quotaAmount="999.00", as_="other")
    for uid in ("A", "B"):
        await api.gql(SET_THRESHOLD, {"i": {"uid": uid, "percent": 50}})
    await balance(api, "record", "B", "60.00", "b")
    await balance(api, "record", "C", "15.00", "c")

    async def uids(
        filter_: dict[str, Any] | None = None,
        order: dict[str, Any] | None = None,
        first: int = 20,
        after: str | None = None,
    ) -> tuple[list[str], Any]:
        data = await api.gql(
            "query($f: EndUserFilter, $o: EndUserOrder, $first: Int, $after: String) { endUsers(filter: $f, "
            "orderBy: $o, first: $first, after: $after) { totalCount pageInfo { endCursor hasNextPage } "
            "edges { node { uid } } } }",
            {"f": filter_, "o": order, "first": first, "after": after},
        )
        conn = data["endUsers"]
        return [e["node"]["uid"] for e in conn["edges"]], conn

    below, conn = await uids({"belowWarningLevel": True})
    assert sorted(below) == ["B", "BS"] and conn["totalCount"] == 2
    above, _ = await uids({"belowWarningLevel": False})
    assert sorted(above) == ["A", "C"]

    asc, _ = await uids(order={"field": "AVAILABLE_QUOTA", "direction": "ASC"})
    assert asc == ["C", "B", "BS", "A"]  # -5, 40, 40 (tie by UID), 100
    desc, _ = await uids(order={"field": "AVAILABLE_QUOTA", "direction": "DESC"})
    assert desc == ["A", "BS", "B", "C"]
    # Keyset pages over the computed order give the same sequence.
    paged: list[str] = []
    after = None
    while True:
        page, conn = await uids(order={"field": "AVAILABLE_QUOTA", "direction": "ASC"}, first=1, after=after)
        paged += page
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
    assert paged == asc

    data = await api.gql("{ summary { accounts belowWarningLevel totalQuota totalAvailable totalOutstanding } }")
    assert data["summary"] == {
        "accounts": 4,
        "belowWarningLevel": 2,  # B and BS (accounts, not pools)
        "totalQuota": "210.00",  # pools counted once: A + B + C
        "totalAvailable": "135.00",  # 100 + 40 - 5
        "totalOutstanding": "5.00",
    }

"""Shutdown policy, PAYG freeze with its cascade, purchase control and credit control (RULES.md)."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from tests.support.accounts import link
from tests.support.api import Api, make_partner, make_token
from tests.support.db import StatementCounter
from tests.support.policy import (
    account_snapshot,
    bulk_master,
    entries,
    freeze,
    order,
    purchase_control,
    row_counts,
    set_quota,
    shutdown_policy,
    state,
    token,
)
from uidhub.models import Account
from uidhub.models.enums import AccountStatus, PartnerKind, Role

# ---------------------------------------------------------------- the state and its defaults


async def test_new_accounts_start_normal_with_immediate_stop(api: Api) -> None:
    await link(api, "M", quotaAmount="10.00")
    await link(api, "S", masterUid="M")
    for uid in ("M", "S"):
        policy = (await state(api, uid))["policy"]
        assert policy == {
            "paygFreezeStatus": "NORMAL",
            "effectivePaygFreezeStatus": "NORMAL",
            "purchaseControl": "NORMAL",
            "effectivePurchaseControl": "NORMAL",
            "shutdownPolicy": "IMMEDIATE_STOP",
            "shutdownDelayCredit": "0.00",
            "creditControlStatus": "NORMAL",
        }


# ---------------------------------------------------------------- shutdown policy


async def test_set_shutdown_policy_is_audited_and_inherited_by_sub_accounts(api: Api) -> None:
    await link(api, "M", quotaAmount="10.00")
    await link(api, "S", masterUid="M")
    payload = await shutdown_policy(api, "M", "DELAY_STOP", "25.50")
    assert payload["userErrors"] == []
    assert payload["endUser"]["policy"]["shutdownPolicy"] == "DELAY_STOP"
    assert payload["endUser"]["policy"]["shutdownDelayCredit"] == "25.50"
    sub = (await state(api, "S"))["policy"]
    assert (sub["shutdownPolicy"], sub["shutdownDelayCredit"]) == ("DELAY_STOP", "25.50")

    [entry] = await entries(api.db, "M", "SHUTDOWN_POLICY_CHANGED")
    assert entry.before == {"shutdownPolicy": "IMMEDIATE_STOP", "shutdownDelayCredit": "0.00"}
    assert entry.after == {"shutdownPolicy": "DELAY_STOP", "shutdownDelayCredit": "25.50"}
    assert entry.operator_uid is not None and entry.method.value == "PLATFORM"

    # The same again writes nothing; DELAY_STOP without a credit means 0.
    await shutdown_policy(api, "M", "DELAY_STOP", "25.50")
    assert len(await entries(api.db, "M", "SHUTDOWN_POLICY_CHANGED")) == 1
    payload = await shutdown_policy(api, "M", "DELAY_STOP")
    assert payload["endUser"]["policy"]["shutdownDelayCredit"] == "0.00"

    before = await row_counts(api.db)
    inherited = await shutdown_policy(api, "S", "NO_STOP")
    assert inherited["endUser"] is None
    assert [e["code"] for e in inherited["userErrors"]] == ["POLICY_INHERITED"]
    assert await row_counts(api.db) == before


@pytest.mark.parametrize(
    ("policy", "credit"),
    [("NO_STOP", "5.00"), ("IMMEDIATE_STOP", "0.01"), ("DELAY_STOP", "-1.00")],
)
async def test_invalid_delay_credit_changes_nothing(api: Api, policy: str, credit: str) -> None:
    await link(api, "M", quotaAmount="10.00")
    snapshot = await account_snapshot(api.db)
    payload = await shutdown_policy(api, "M", policy, credit)
    assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [
        ("INVALID_INPUT", ["input", "shutdownDelayCredit"])
    ]
    assert await account_snapshot(api.db) == snapshot


async def test_zero_delay_credit_is_accepted_with_any_policy(api: Api) -> None:
    await link(api, "M", quotaAmount="10.00")
    payload = await shutdown_policy(api, "M", "NO_STOP", "0")
    assert payload["userErrors"] == []
    assert payload["endUser"]["policy"]["shutdownPolicy"] == "NO_STOP"


# ---------------------------------------------------------------- credit control


async def _arrears(api: Api, owner: str, below_zero: str) -> None:
    """Bring `owner`'s pool (amount 100.00) to available = -below_zero via a subscription and a quota cut."""
    cents = int(below_zero.replace(".", ""))
    amount = 100_00 - cents
    await set_quota(api, owner, f"{amount // 100}.{amount % 100:02d}")


async def _credit(api: Api, uid: str) -> str:
    return (await state(api, uid))["policy"]["creditControlStatus"]


async def _credit_entries(api: Api, uid: str) -> list[tuple[str, str]]:
    found = await entries(api.db, uid, "CREDIT_CONTROL_CHANGED")
    for entry in found:
        assert entry.method.value == "SYSTEM"
        assert entry.operator_uid is None and entry.operator_name is None
    return [(e.before["creditControlStatus"], e.after["creditControlStatus"]) for e in found]


@pytest.mark.parametrize(
    ("policy", "delay", "expected"),
    [
        # available: 0.00, -5.00 (within a 10.00 delay), -10.00 (the edge), -10.01 (beyond)
        ("IMMEDIATE_STOP", None, ["NORMAL", "SHUTDOWN", "SHUTDOWN", "SHUTDOWN"]),
        ("DELAY_STOP", "10.00", ["NORMAL", "ARREARS_NOT_SHUTDOWN", "ARREARS_NOT_SHUTDOWN", "SHUTDOWN"]),
        ("NO_STOP", None, ["NORMAL", "ARREARS_NOT_SHUTDOWN", "ARREARS_NOT_SHUTDOWN", "ARREARS_NOT_SHUTDOWN"]),
    ],
)
async def test_credit_control_table_and_recovery(api: Api, policy: str, delay: str | None, expected: list[str]) -> None:
    await link(api, "M", quotaAmount="100.00")
    await link(api, "S1", masterUid="M")
    await link(api, "S2", masterUid="M")
    assert (await shutdown_policy(api, "M", policy, delay))["userErrors"] == []
    # Spend the whole quota with a subscription order: available 0.00 is still NORMAL.
    placed = await order(api, "S1", "SUBSCRIPTION", "100.00")
    assert placed["decision"]["allowed"] is True
    seen = [await _credit(api, "M")]
    for below in ("5.00", "10.00", "10.01"):
        await _arrears(api, "M", below)
        seen.append(await _credit(api, "M"))
        # Master and every sub-account read the same status.
        assert await _credit(api, "S1") == await _credit(api, "S2") == seen[-1]
    assert seen == expected

    # Raising the quota recovers to NORMAL the same way.
    await set_quota(api, "M", "150.00")
    assert await _credit(api, "M") == await _credit(api, "S2") == "NORMAL"

    transitions = []
    for previous, current in zip(["NORMAL", *expected], [*expected, "NORMAL"], strict=True):
        if previous != current:
            transitions.append((previous, current))
    for uid in ("M", "S1", "S2"):
        assert await _credit_entries(api, uid) == transitions, uid


async def test_policy_change_recomputes_credit_control(api: Api) -> None:
    await link(api, "M", quotaAmount="100.00")
    await link(api, "S", masterUid="M")
    await order(api, "M", "SUBSCRIPTION", "100.00")
    await _arrears(api, "M", "5.00")
    assert await _credit(api, "S") == "SHUTDOWN"
    await shutdown_policy(api, "M", "DELAY_STOP", "5.00")
    assert await _credit(api, "S") == "ARREARS_NOT_SHUTDOWN"
    await shutdown_policy(api, "M", "DELAY_STOP", "4.99")
    assert await _credit(api, "S") == "SHUTDOWN"
    await shutdown_policy(api, "M", "NO_STOP")
    assert await _credit(api, "M") == "ARREARS_NOT_SHUTDOWN"
    assert await _credit_entries(api, "S") == [
        ("NORMAL", "SHUTDOWN"),
        ("SHUTDOWN", "ARREARS_NOT_SHUTDOWN"),
        ("ARREARS_NOT_SHUTDOWN", "SHUTDOWN"),
        ("SHUTDOWN", "ARREARS_NOT_SHUTDOWN"),
    ]
    # A credit control change is written in the same transaction as the policy change that caused it.
    [policy_entry] = [
        e for e in await entries(api.db, "M", "SHUTDOWN_POLICY_CHANGED") if e.after["shutdownPolicy"] == "NO_STOP"
    ]
    credit_entry = (await entries(api.db, "M", "CREDIT_CONTROL_CHANGED"))[-1]
    assert credit_entry.id == policy_entry.id + 1 or credit_entry.occurred_at >= policy_entry.occurred_at


async def test_end_users_filters_on_effective_policy(api: Api) -> None:
    await link(api, "M", quotaAmount="100.00")
    await link(api, "S", masterUid="M")
    await link(api, "X", quotaAmount="100.00")
    await freeze(api, ["M"])
    assert (await order(api, "X", "SUBSCRIPTION", "100.00"))["decision"]["allowed"] is True
    await purchase_control(api, "X", "BANNED")
    await _arrears(api, "X", "1.00")

    async def uids(filter_: dict[str, object]) -> list[str]:
        data = await api.gql(
            "query($f: EndUserFilter) { endUsers(filter: $f, orderBy: {field: UID}) { edges { node { uid } } } }",
            {"f": filter_},
        )
        return [e["node"]["uid"] for e in data["endUsers"]["edges"]]

    assert await uids({"paygFreezeStatus": "FROZEN"}) == ["M", "S"]
    assert await uids({"paygFreezeStatus": "NORMAL"}) == ["X"]
    assert await uids({"purchaseControl": "BANNED"}) == ["X"]
    assert await uids({"creditControlStatuses": ["SHUTDOWN"]}) == ["X"]
    assert await uids({"creditControlStatuses": ["NORMAL", "ARREARS_NOT_SHUTDOWN"]}) == ["M", "S"]


# ---------------------------------------------------------------- freeze


async def test_freeze_preview_writes_nothing_and_reports_the_cascade(api: Api) -> None:
    await link(api, "M", quotaAmount="100.00")
    await link(api, "S1", masterUid="M")
    await link(api, "S2", masterUid="M")
    await link(api, "X", quotaAmount="100.00")
    await order(api, "S1", "PAYG", "0")
    await order(api, "S1", "PAYG", "0")
    await order(api, "S2", "SUBSCRIPTION", "1.00")
    await order(api, "M", "PAYG", "0")
    await order(api, "X", "PAYG", "0")
    await freeze(api, ["S2"])  # already frozen on its own: its effective status does not change
    before, snapshot = await row_counts(api.db), await account_snapshot(api.db)

    preview = await freeze(api, ["M", "NOPE"], confirm=False, reason="overdue")
    assert preview["applied"] is False
    assert preview["userErrors"] == []
    assert sorted(a["uid"] for a in preview["affectedAccounts"]) == ["M", "S1"]
    assert preview["affectedPaygInstances"] == 3
    results = {r["uid"]: r for r in preview["results"]}
    assert results["M"]["userErrors"] == []
    assert results["M"]["endUser"]["policy"]["paygFreezeStatus"] == "NORMAL"  # not applied
    assert [e["code"] for e in results["NOPE"]["userErrors"]] == ["NOT_FOUND"]
    assert results["NOPE"]["endUser"] is None
    assert await row_counts(api.db) == before
    assert await account_snapshot(api.db) == snapshot


async def test_freeze_applies_with_cascade_entries_and_unfreeze_keeps_own_freeze(api: Api) -> None:
    await link(api, "M", quotaAmount="100.00")
    await link(api, "S1", masterUid="M")
    await link(api, "S2", masterUid="M")
    await order(api, "S1", "PAYG", "0")
    await order(api, "S1", "SUBSCRIPTION", "0")
    assert (await freeze(api, ["S2"], reason="own"))["applied"] is True

    applied = await freeze(api, ["M"], reason="overdue invoice")
    assert applied["applied"] is True
    assert sorted(a["uid"] for a in applied["affectedAccounts"]) == ["M", "S1"]
    assert applied["affectedPaygInstances"] == 1
    assert applied["results"][0]["endUser"]["policy"] == {
        "paygFreezeStatus": "FROZEN",
        "effectivePaygFreezeStatus": "FROZEN",
    }

    [own] = await entries(api.db, "M", "PAYG_FROZEN")
    assert own.reason == "overdue invoice" and own.cascade_from_id is None
    assert own.before == {"paygFreezeStatus": "NORMAL", "effectivePaygFreezeStatus": "NORMAL"}
    assert own.after == {"paygFreezeStatus": "FROZEN", "effectivePaygFreezeStatus": "FROZEN"}
    [cascade] = await entries(api.db, "S1", "PAYG_FROZEN")
    assert cascade.cascade_from_id == own.account_id and cascade.reason == "overdue invoice"
    assert cascade.before == {"effectivePaygFreezeStatus": "NORMAL"}
    assert cascade.after == {"effectivePaygFreezeStatus": "FROZEN"}
    # S2 was frozen in its own right: the master's freeze changes nothing for it.
    assert [e.reason for e in await entries(api.db, "S2", "PAYG_FROZEN")] == ["own"]

    sub = await state(api, "S1")
    assert sub["policy"]["paygFreezeStatus"] == "NORMAL"
    assert sub["policy"]["effectivePaygFreezeStatus"] == "FROZEN"
    stopped = {i["billingMethod"]: (i["status"], i["stopReasons"]) for i in sub["instances"]}
    assert stopped == {"PAYG": ("STOPPED", ["PAYG_FREEZE"]), "SUBSCRIPTION": ("RUNNING", [])}

    # Freezing again is a no-op: nothing written.
    before = await row_counts(api.db)
    again = await freeze(api, ["M"])
    assert again["applied"] is True and again["affectedAccounts"] == [] and again["affectedPaygInstances"] == 0
    assert await row_counts(api.db) == before

    unfrozen = await freeze(api, ["M"], unfreeze=True, reason="paid")
    assert sorted(a["uid"] for a in unfrozen["affectedAccounts"]) == ["M", "S1"]
    assert unfrozen["affectedPaygInstances"] == 1
    assert (await state(api, "S2"))["policy"]["effectivePaygFreezeStatus"] == "FROZEN"
    assert (await state(api, "S1"))["policy"]["effectivePaygFreezeStatus"] == "NORMAL"
    [back] = await entries(api.db, "S1", "PAYG_UNFROZEN")
    assert back.cascade_from_id is not None and back.reason == "paid"
    assert await entries(api.db, "S2", "PAYG_UNFROZEN") == []
    running = {i["billingMethod"]: i["status"] for i in (await state(api, "S1"))["instances"]}
    assert running == {"PAYG": "RUNNING", "SUBSCRIPTION": "RUNNING"}


async def test_bulk_freeze_reports_per_uid(api: Api) -> None:
    await link(api, "A", quotaAmount="1.00")
    await link(api, "B", quotaAmount="1.00")
    await link(api, "GONE", quotaAmount="0")
    await link(api, "THEIRS", as_="other")
    async with api.db.write() as session:
        await session.execute(update(Account).where(Account.uid == "GONE").values(status=AccountStatus.TERMINATED))
    payload = await freeze(api, ["A", "B", "GONE", "THEIRS", "A", "NOPE"], reason="bulk")
    assert payload["applied"] is True
    codes = {r["uid"]: [e["code"] for e in r["userErrors"]] for r in payload["results"]}
    assert codes == {"A": [], "B": [], "GONE": ["ACCOUNT_NOT_ACTIVE"], "THEIRS": ["NOT_FOUND"], "NOPE": ["NOT_FOUND"]}
    assert sorted(a["uid"] for a in payload["affectedAccounts"]) == ["A", "B"]
    assert len(await entries(api.db, "A", "PAYG_FROZEN")) == 1
    assert await entries(api.db, "GONE", "PAYG_FROZEN") == []
    theirs = await api.gql('{ endUser(uid: "THEIRS") { policy { paygFreezeStatus } } }', as_="other")
    assert theirs["endUser"]["policy"]["paygFreezeStatus"] == "NORMAL"


async def test_freeze_input_limits(api: Api) -> None:
    await link(api, "A", quotaAmount="1.00")
    body = await api.gql(
        "mutation($i: FreezeInput!) { freezePayg(input: $i) { applied } }",
        {"i": {"uids": [f"U{i}" for i in range(101)], "confirm": True}},
        errors=True,
    )
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    bad = await freeze(api, ["A"], reason="bad\x00reason")
    assert [(e["code"], e["field"]) for e in bad["userErrors"]] == [("INVALID_INPUT", ["input", "reason"])]
    empty = await freeze(api, [])
    assert [e["code"] for e in empty["userErrors"]] == ["INVALID_INPUT"]
    assert (await state(api, "A"))["policy"]["paygFreezeStatus"] == "NORMAL"


async def test_a_frozen_sub_accounts_own_freeze_and_master_in_one_batch(api: Api) -> None:
    await link(api, "M", quotaAmount="1.00")
    await link(api, "S", masterUid="M")
    payload = await freeze(api, ["M", "S"])
    assert sorted(a["uid"] for a in payload["affectedAccounts"]) == ["M", "S"]
    # Both own settings changed: one own entry each, no cascade entry.
    [entry] = await entries(api.db, "S", "PAYG_FROZEN")
    assert entry.cascade_from_id is None
    assert entry.after == {"paygFreezeStatus": "FROZEN", "effectivePaygFreezeStatus": "FROZEN"}
    # Unfreezing the master only: S stays frozen in its own right, no entry for it.
    payload = await freeze(api, ["M"], unfreeze=True)
    assert [a["uid"] for a in payload["affectedAccounts"]] == ["M"]
    assert await entries(api.db, "S", "PAYG_UNFROZEN") == []


# ---------------------------------------------------------------- purchase control


async def test_purchase_control_with_reason_and_cascade(api: Api) -> None:
    await link(api, "M", quotaAmount="1.00")
    await link(api, "S1", masterUid="M")
    await link(api, "S2", masterUid="M")
    await purchase_control(api, "S2", "BANNED", "own ban")
    payload = await purchase_control(api, "M", "BANNED", "fraud check")
    assert payload["userErrors"] == []
    assert payload["endUser"]["policy"]["purchaseControl"] == "BANNED"
    [own] = await entries(api.db, "M", "PURCHASE_CONTROL_CHANGED")
    assert own.reason == "fraud check"
    assert own.before == {"purchaseControl": "NORMAL", "effectivePurchaseControl": "NORMAL"}
    assert own.after == {"purchaseControl": "BANNED", "effectivePurchaseControl": "BANNED"}
    [cascade] = await entries(api.db, "S1", "PURCHASE_CONTROL_CHANGED")
    assert cascade.cascade_from_id == own.account_id and cascade.after == {"effectivePurchaseControl": "BANNED"}
    assert len(await entries(api.db, "S2", "PURCHASE_CONTROL_CHANGED")) == 1  # only its own ban
    sub = (await state(api, "S1"))["policy"]
    assert (sub["purchaseControl"], sub["effectivePurchaseControl"]) == ("NORMAL", "BANNED")

    before = await row_counts(api.db)
    await purchase_control(api, "M", "BANNED", "again")
    assert await row_counts(api.db) == before

    await purchase_control(api, "M", "NORMAL")
    assert (await state(api, "S1"))["policy"]["effectivePurchaseControl"] == "NORMAL"
    assert (await state(api, "S2"))["policy"]["effectivePurchaseControl"] == "BANNED"
    missing = await purchase_control(api, "NOPE", "BANNED")
    assert [e["code"] for e in missing["userErrors"]] == ["NOT_FOUND"]


# ---------------------------------------------------------------- permissions


@pytest.mark.parametrize("role", [Role.VIEWER, Role.BILLING, Role.END_USER])
async def test_policy_changes_need_an_editor(api: Api, role: Role) -> None:
    await link(api, "M", quotaAmount="1.00")
    tok = await token(api, role, account_uid="M" if role is Role.END_USER else None)
    for query, variables in (
        ('mutation { freezePayg(input: {uids: ["M"], confirm: false}) { applied } }', None),
        ('mutation { setPurchaseControl(input: {uid: "M", status: BANNED}) { endUser { uid } } }', None),
        ('mutation { setShutdownPolicy(input: {uid: "M", policy: NO_STOP}) { endUser { uid } } }', None),
    ):
        body = await api.gql(query, variables, token=tok, errors=True)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
    assert (await state(api, "M"))["policy"]["purchaseControl"] == "NORMAL"


async def test_agency_may_not_change_policy(api: Api) -> None:
    agency = await make_partner(api.db, "P-AGENCY", PartnerKind.AGENCY)
    tok = await make_token(api.db, agency, Role.ADMIN)
    await api.gql('mutation { linkAccount(input: {uid: "AG"}) { userErrors { code } } }', token=tok)
    body = await api.gql('mutation { unfreezePayg(input: {uids: ["AG"]}) { applied } }', token=tok, errors=True)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    body = await api.gql(
        '{ purchaseCheck(uid: "AG", billingMethod: PAYG, amount: "0") { allowed } }', token=tok, errors=True
    )
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


# ---------------------------------------------------------------- preview cost


async def _preview_statements(api: Api, master_uid: str) -> tuple[int, dict[str, object]]:
    query = (
        "mutation($i: FreezeInput!) { freezePayg(input: $i) { applied affectedPaygInstances "
        "affectedAccounts { uid } results { uid endUser { uid } userErrors { code } } userErrors { code } } }"
    )
    await api.gql("{ __typename }")  # the token authenticated (and cached) first: only the preview is counted
    with StatementCounter(api.db) as counter:
        data = await api.gql(query, {"i": {"uids": [master_uid], "confirm": False}})
    return counter.count, data["freezePayg"]


async def test_freeze_preview_runs_a_constant_number_of_statements(api: Api) -> None:
    await bulk_master(api.db, "P-MAIN", "BIG", subs=50, instances_per_account=10)  # 510 instances, 255 PAYG
    await bulk_master(api.db, "P-MAIN", "SMALL", subs=5, instances_per_account=10)  # 60 instances, 30 PAYG
    big_count, big = await _preview_statements(api, "BIG")
    small_count, small = await _preview_statements(api, "SMALL")
    assert len(big["affectedAccounts"]) == 51 and big["affectedPaygInstances"] == 255
    assert len(small["affectedAccounts"]) == 6 and small["affectedPaygInstances"] == 30
    assert big_count == small_count, (big_count, small_count)
    assert big_count <= 6

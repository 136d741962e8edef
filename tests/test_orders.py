"""purchaseCheck and placeOrder against RULES.md ("Shutdown policy and its cascade", "Credit control", "Orders")."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from tests.support.accounts import link
from tests.support.api import Api, make_partner, make_token
from tests.support.db import StatementCounter
from tests.support.policy import (
    account_snapshot,
    check,
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
from uidhub.models import Account, AuditEntry, Instance, LedgerEntry
from uidhub.models.enums import PartnerKind, Role

# ---------------------------------------------------------------- the matrix

KINDS = ("standalone", "master", "sub")
CONDITIONS = ("frozen_self", "frozen_master", "banned_self", "banned_master", "credit_shutdown", "arrears")
ORDERS = ("PAYG", "SUBSCRIPTION_WITHIN", "SUBSCRIPTION_ABOVE")

#: Every pool starts at 100.00; arrears conditions bring it to -5.00.
AMOUNTS = {"PAYG": "1.00", "SUBSCRIPTION_WITHIN": "10.00", "SUBSCRIPTION_ABOVE": "500.00"}


@dataclass(frozen=True)
class Expect:
    reasons: tuple[str, ...]
    #: Whose setting blocks: "self", "master" or "owner" (the pool's owner: the master for a sub-account).
    blocking: str | None


ALLOWED = Expect((), None)
NO_QUOTA = Expect(("INSUFFICIENT_QUOTA",), "owner")

#: condition → order → expected decision, straight from RULES.md.
EXPECTED: dict[str, dict[str, Expect]] = {
    "frozen_self": {
        "PAYG": Expect(("PAYG_FROZEN",), "self"),
        "SUBSCRIPTION_WITHIN": ALLOWED,  # a frozen account may still buy a subscription within quota
        "SUBSCRIPTION_ABOVE": NO_QUOTA,
    },
    "frozen_master": {
        "PAYG": Expect(("PAYG_FROZEN",), "master"),
        "SUBSCRIPTION_WITHIN": ALLOWED,
        "SUBSCRIPTION_ABOVE": NO_QUOTA,
    },
    "banned_self": {
        "PAYG": Expect(("PURCHASE_BANNED",), "self"),
        "SUBSCRIPTION_WITHIN": Expect(("PURCHASE_BANNED",), "self"),
        "SUBSCRIPTION_ABOVE": Expect(("PURCHASE_BANNED", "INSUFFICIENT_QUOTA"), "self"),
    },
    "banned_master": {
        "PAYG": Expect(("PURCHASE_BANNED",), "master"),
        "SUBSCRIPTION_WITHIN": Expect(("PURCHASE_BANNED",), "master"),
        "SUBSCRIPTION_ABOVE": Expect(("PURCHASE_BANNED", "INSUFFICIENT_QUOTA"), "master"),
    },
    "credit_shutdown": {  # IMMEDIATE_STOP, available -5.00
        "PAYG": Expect(("CREDIT_SHUTDOWN", "INSUFFICIENT_QUOTA"), "owner"),
        "SUBSCRIPTION_WITHIN": NO_QUOTA,  # nothing is within a negative available
        "SUBSCRIPTION_ABOVE": NO_QUOTA,
    },
    "arrears": {  # NO_STOP, available -5.00: ARREARS_NOT_SHUTDOWN
        "PAYG": NO_QUOTA,
        "SUBSCRIPTION_WITHIN": NO_QUOTA,
        "SUBSCRIPTION_ABOVE": NO_QUOTA,
    },
}

#: condition → the existing instances' (PAYG, SUBSCRIPTION) status and stop reasons.
INSTANCES: dict[str, dict[str, tuple[str, list[str]]]] = {
    "frozen_self": {"PAYG": ("STOPPED", ["PAYG_FREEZE"]), "SUBSCRIPTION": ("RUNNING", [])},
    "frozen_master": {"PAYG": ("STOPPED", ["PAYG_FREEZE"]), "SUBSCRIPTION": ("RUNNING", [])},
    "banned_self": {"PAYG": ("RUNNING", []), "SUBSCRIPTION": ("RUNNING", [])},
    "banned_master": {"PAYG": ("RUNNING", []), "SUBSCRIPTION": ("RUNNING", [])},
    "credit_shutdown": {"PAYG": ("STOPPED", ["CREDIT_SHUTDOWN"]), "SUBSCRIPTION": ("RUNNING", [])},
    "arrears": {"PAYG": ("RUNNING", []), "SUBSCRIPTION": ("RUNNING", [])},
}

#: A standalone account or a master has no master: "… master" conditions do not apply to them.
SCENARIOS = [
    (kind, condition)
    for kind, condition in itertools.product(KINDS, CONDITIONS)
    if not (kind != "sub" and condition.endswith("_master"))
]


async def _setup(api: Api, n: int, kind: str, condition: str) -> tuple[str, dict[str, str]]:
    """Accounts of one scenario; returns the ordering UID and who is who."""
    master, sub, alone = f"M{n}", f"M{n}-S", f"A{n}"
    if kind == "standalone":
        await link(api, alone, quotaAmount="100.00")
        uid, roles = alone, {"self": alone, "owner": alone}
    else:
        await link(api, master, quotaAmount="100.00")
        await link(api, sub, masterUid=master)
        uid = master if kind == "master" else sub
        roles = {"self": uid, "owner": master, "master": master}
    owner = roles["owner"]
    # One instance of each kind exists before the condition applies.
    for method in ("PAYG", "SUBSCRIPTION"):
        assert (await order(api, uid, method, "0"))["decision"]["allowed"] is True

    if condition == "frozen_self":
        await freeze(api, [uid])
    elif condition == "frozen_master":
        await freeze(api, [master])
    elif condition == "banned_self":
        await purchase_control(api, uid, "BANNED")
    elif condition == "banned_master":
        await purchase_control(api, master, "BANNED")
    else:
        if condition == "arrears":
            await shutdown_policy(api, owner, "NO_STOP")
        assert (await order(api, uid, "SUBSCRIPTION", "100.00"))["decision"]["allowed"] is True
        await set_quota(api, owner, "95.00")
    return uid, roles


async def _instances(api: Api, uid: str) -> list[dict[str, object]]:
    return (await state(api, uid))["instances"]


async def test_order_matrix(api: Api) -> None:
    failures: list[str] = []

    def expect(label: str, actual: object, wanted: object) -> None:
        if actual != wanted:
            failures.append(f"{label}: got {actual!r}, expected {wanted!r}")

    for n, (kind, condition) in enumerate(SCENARIOS):
        uid, roles = await _setup(api, n, kind, condition)
        label = f"{kind}/{condition}"
        arrears = condition in ("credit_shutdown", "arrears")
        available = "-5.00" if arrears else "100.00"
        credit = {"credit_shutdown": "SHUTDOWN", "arrears": "ARREARS_NOT_SHUTDOWN"}.get(condition, "NORMAL")
        expect(f"{label} credit control", (await state(api, uid))["policy"]["creditControlStatus"], credit)

        # The instances that existed before the condition.
        for instance in await _instances(api, uid):
            wanted = INSTANCES[condition][instance["billingMethod"]]
            expect(
                f"{label} existing {instance['billingMethod']}", (instance["status"], instance["stopReasons"]), wanted
            )

        # SUBSCRIPTION_WITHIN last: when allowed it charges the pool.
        for kind_of_order in ("PAYG", "SUBSCRIPTION_ABOVE", "SUBSCRIPTION_WITHIN"):
            method = "PAYG" if kind_of_order == "PAYG" else "SUBSCRIPTION"
            wanted = EXPECTED[condition][kind_of_order]
            wanted_decision = {
                "allowed": not wanted.reasons,
                "reasons": list(wanted.reasons),
                "availableQuota": available,
                "blockingAccount": {"uid": roles[wanted.blocking]} if wanted.blocking else None,
            }
            olabel = f"{label}/{kind_of_order}"
            before = await row_counts(api.db)
            checked = await check(api, uid, method, AMOUNTS[kind_of_order])
            expect(f"{olabel} purchaseCheck", checked, wanted_decision)
            expect(f"{olabel} purchaseCheck writes nothing", await row_counts(api.db), before)

            quota_before = (await state(api, uid))["quota"]
            placed = await order(api, uid, method, AMOUNTS[kind_of_order], description=olabel)
            expect(f"{olabel} placeOrder", placed["decision"], wanted_decision)
            quota_after = (await state(api, uid))["quota"]
            orders_logged = [e for e in await entries(api.db, uid, "ORDER_PLACED") if e.after["description"] == olabel]
            if wanted.reasons:
                expect(f"{olabel} no instance", placed["instance"], None)
                expect(f"{olabel} pool unchanged", quota_after, quota_before)
                expect(f"{olabel} no ORDER_PLACED", len(orders_logged), 0)
            else:
                instance = placed["instance"] or {}
                expect(
                    f"{olabel} instance",
                    (instance.get("billingMethod"), instance.get("description"), instance.get("account")),
                    (method, olabel, {"uid": uid}),
                )
                # A new instance is in the state its account's policy gives it.
                wanted_state = INSTANCES[condition][method]
                expect(
                    f"{olabel} new instance state", (instance.get("status"), instance.get("stopReasons")), wanted_state
                )
                expect(f"{olabel} ORDER_PLACED", len(orders_logged), 1)
                charged = AMOUNTS[kind_of_order] if method == "SUBSCRIPTION" else "0.00"
                expect(
                    f"{olabel} charged",
                    _cents(quota_before["available"]) - _cents(quota_after["available"]),
                    _cents(charged),
                )
    assert not failures, "\n".join(failures)


def _cents(money: str) -> int:
    sign = -1 if money.startswith("-") else 1
    whole, _, frac = money.lstrip("-").partition(".")
    return sign * (int(whole) * 100 + int(frac.ljust(2, "0")))


async def test_console_case_frozen_master(api: Api) -> None:
    """The console documentation's case: a frozen master stops its sub-accounts' PAYG, nothing else.

    Sub-account PAYG instances stop, subscriptions keep running, no new PAYG order is allowed,
    and a subscription order is allowed within the master's remaining quota.
    """
    await link(api, "MASTER", quotaAmount="100.00")
    await link(api, "SUB", masterUid="MASTER")
    payg = (await order(api, "SUB", "PAYG", "0"))["instance"]
    subscription = (await order(api, "SUB", "SUBSCRIPTION", "30.00"))["instance"]
    assert payg["status"] == subscription["status"] == "RUNNING"

    frozen = await freeze(api, ["MASTER"], reason="console")
    assert sorted(a["uid"] for a in frozen["affectedAccounts"]) == ["MASTER", "SUB"]
    assert frozen["affectedPaygInstances"] == 1

    instances = {i["id"]: i for i in await _instances(api, "SUB")}
    assert (instances[payg["id"]]["status"], instances[payg["id"]]["stopReasons"]) == ("STOPPED", ["PAYG_FREEZE"])
    assert (instances[subscription["id"]]["status"], instances[subscription["id"]]["stopReasons"]) == ("RUNNING", [])

    denied = await order(api, "SUB", "PAYG", "0")
    assert denied["decision"]["reasons"] == ["PAYG_FROZEN"]
    assert denied["decision"]["blockingAccount"] == {"uid": "MASTER"}
    assert denied["instance"] is None

    # 70.00 remain on the master's pool: 60.00 fits, another 60.00 does not.
    within = await order(api, "SUB", "SUBSCRIPTION", "60.00")
    assert within["decision"]["allowed"] is True and within["instance"]["status"] == "RUNNING"
    assert (await state(api, "MASTER"))["quota"]["available"] == "10.00"
    above = await order(api, "SUB", "SUBSCRIPTION", "60.00")
    assert above["decision"]["reasons"] == ["INSUFFICIENT_QUOTA"]
    assert above["decision"]["availableQuota"] == "10.00"


# ---------------------------------------------------------------- placeOrder details


async def test_place_order_is_idempotent(api: Api) -> None:
    await link(api, "A", quotaAmount="100.00")
    first = await order(api, "A", "SUBSCRIPTION", "40.00", key="same")
    counts = await row_counts(api.db)
    again = await order(api, "A", "SUBSCRIPTION", "40.00", key="same")
    assert again == first
    assert await row_counts(api.db) == counts
    assert (await state(api, "A"))["quota"]["available"] == "60.00"
    conflict = await order(api, "A", "SUBSCRIPTION", "41.00", key="same")
    assert [e["code"] for e in conflict["userErrors"]] == ["IDEMPOTENCY_CONFLICT"]
    assert conflict["decision"] is None
    assert await row_counts(api.db) == counts

    # A denial is a result too: its repeat returns the same denial, even after the cause is gone.
    await purchase_control(api, "A", "BANNED")
    denied = await order(api, "A", "PAYG", "0", key="denied")
    await purchase_control(api, "A", "NORMAL")
    assert await order(api, "A", "PAYG", "0", key="denied") == denied
    assert denied["decision"]["reasons"] == ["PURCHASE_BANNED"]


async def test_subscription_order_charges_the_pool_with_a_ledger_entry_and_audit(api: Api) -> None:
    await link(api, "M", quotaAmount="100.00")
    await link(api, "S", masterUid="M")
    placed = await order(api, "S", "SUBSCRIPTION", "12.34", key="sub-1", description="8 vCPU, 1 year")
    assert placed["userErrors"] == [] and placed["decision"]["allowed"] is True
    master = await state(api, "M")
    assert master["quota"]["consumedUndeducted"] == "12.34" and master["quota"]["available"] == "87.66"
    async with api.db.read() as session:
        ledger = (await session.scalars(select(LedgerEntry))).all()
        sub_id = await session.scalar(select(Account.id).where(Account.uid == "S"))
    assert [(x.kind.value, x.amount_cents, x.account_id, x.idempotency_key) for x in ledger] == [
        ("SUBSCRIPTION_ORDER", 1234, sub_id, "sub-1")
    ]
    [entry] = await entries(api.db, "S", "ORDER_PLACED")
    assert entry.after["billingMethod"] == "SUBSCRIPTION" and entry.after["amount"] == "12.34"
    assert entry.operator_uid is not None

    # Spending past zero shuts the pool down in the same transaction (IMMEDIATE_STOP).
    assert (await order(api, "S", "SUBSCRIPTION", "87.66"))["decision"]["allowed"] is True
    assert (await state(api, "S"))["policy"]["creditControlStatus"] == "NORMAL"  # available 0.00
    await set_quota(api, "M", "99.99")
    assert (await state(api, "S"))["policy"]["creditControlStatus"] == "SHUTDOWN"


async def test_payg_order_is_not_charged_and_needs_positive_available(api: Api) -> None:
    await link(api, "A", quotaAmount="0")
    denied = await order(api, "A", "PAYG", "5.00")
    assert denied["decision"]["reasons"] == ["INSUFFICIENT_QUOTA"]
    assert denied["decision"]["blockingAccount"] == {"uid": "A"}
    await set_quota(api, "A", "0.01")
    allowed = await order(api, "A", "PAYG", "5.00")
    assert allowed["decision"]["allowed"] is True
    assert (await state(api, "A"))["quota"]["available"] == "0.01"


async def test_order_input_errors_change_nothing(api: Api) -> None:
    await link(api, "A", quotaAmount="10.00")
    counts, snapshot = await row_counts(api.db), await account_snapshot(api.db)
    for uid, amount, description, code, field in (
        ("A", "-1.00", None, "INVALID_INPUT", ["input", "amount"]),
        ("A", "1.00", "x" * 501, "INVALID_INPUT", ["input", "description"]),
        ("NOPE", "1.00", None, "NOT_FOUND", ["input", "uid"]),
    ):
        payload = await order(api, uid, "SUBSCRIPTION", amount, description=description)
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [(code, field)]
    theirs = await order(api, "A", "SUBSCRIPTION", "1.00", as_="other")
    assert [e["code"] for e in theirs["userErrors"]] == ["NOT_FOUND"]
    assert await row_counts(api.db) == counts
    assert await account_snapshot(api.db) == snapshot


async def test_not_active_accounts_are_denied(api: Api) -> None:
    await link(api, "M", quotaAmount="10.00")
    await link(api, "S", masterUid="M")
    await api.gql(
        'mutation { changeAccountStatus(input: {uid: "M", status: TO_BE_CONFIRMED}) { userErrors { code } } }'
    )
    decision = await check(api, "S", "SUBSCRIPTION", "1.00")
    assert decision["reasons"] == ["ACCOUNT_NOT_ACTIVE"]
    assert decision["blockingAccount"] == {"uid": "S"}


async def test_purchase_check_runs_no_write(api: Api) -> None:
    await link(api, "M", quotaAmount="10.00")
    await link(api, "S", masterUid="M")
    await freeze(api, ["M"])
    with StatementCounter(api.db) as counter:
        decision = await check(api, "S", "PAYG", "1.00")
    assert decision["reasons"] == ["PAYG_FROZEN"]
    writes = [s for s in counter.statements if s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == []
    body = await api.gql('{ purchaseCheck(uid: "NOPE", billingMethod: PAYG, amount: "1") { allowed } }', errors=True)
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    body = await api.gql('{ purchaseCheck(uid: "S", billingMethod: PAYG, amount: "-1") { allowed } }', errors=True)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_instance_node_respects_visibility(api: Api) -> None:
    await link(api, "M", quotaAmount="10.00")
    await link(api, "S", masterUid="M")
    instance = (await order(api, "S", "PAYG", "0", description="vm"))["instance"]
    query = (
        "query($id: ID!) { node(id: $id) { id ... on Instance { billingMethod status description account { uid } } } }"
    )
    mine = await api.gql(query, {"id": instance["id"]})
    assert mine["node"] == {
        "id": instance["id"],
        "billingMethod": "PAYG",
        "status": "RUNNING",
        "description": "vm",
        "account": {"uid": "S"},
    }
    assert (await api.gql(query, {"id": instance["id"]}, as_="other"))["node"] is None
    # An END_USER token of the sub-account sees it, one of an unrelated account does not.
    await link(api, "X", quotaAmount="1.00")
    sub_token = await token(api, Role.END_USER, account_uid="S")
    other_token = await token(api, Role.END_USER, account_uid="X")
    assert (await api.gql(query, {"id": instance["id"]}, token=sub_token))["node"]["account"] == {"uid": "S"}
    assert (await api.gql(query, {"id": instance["id"]}, token=other_token))["node"] is None
    # Filtering instances by billing method.
    await order(api, "S", "SUBSCRIPTION", "1.00")
    data = await api.gql('{ endUser(uid: "S") { instances(billingMethod: SUBSCRIPTION) { billingMethod } } }')
    assert data["endUser"]["instances"] == [{"billingMethod": "SUBSCRIPTION"}]


async def test_blocking_master_is_hidden_from_a_sub_accounts_end_user(api: Api) -> None:
    await link(api, "M", quotaAmount="10.00")
    await link(api, "S", masterUid="M")
    await freeze(api, ["M"])
    sub_token = await token(api, Role.END_USER, account_uid="S")
    decision = await check(api, "S", "PAYG", "1.00", token=sub_token)
    assert decision["reasons"] == ["PAYG_FROZEN"]
    assert decision["blockingAccount"] is None  # the master is not visible to the sub-account's own token


@pytest.mark.parametrize(
    ("role", "order_ok", "check_ok"),
    [
        (Role.BILLING, True, True),
        (Role.OPERATOR, True, True),
        (Role.VIEWER, False, True),
        (Role.END_USER, False, True),
    ],
)
async def test_order_permissions(api: Api, role: Role, order_ok: bool, check_ok: bool) -> None:
    await link(api, "A", quotaAmount="10.00")
    tok = await token(api, role, account_uid="A" if role is Role.END_USER else None)
    body = await api.gql(
        'mutation { placeOrder(input: {uid: "A", billingMethod: PAYG, amount: "0", idempotencyKey: "p"}) '
        "{ decision { allowed } } }",
        token=tok,
        errors=True,
    )
    if order_ok:
        assert body["data"]["placeOrder"]["decision"]["allowed"] is True, body
    else:
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    body = await api.gql(
        '{ purchaseCheck(uid: "A", billingMethod: PAYG, amount: "0") { allowed } }', token=tok, errors=True
    )
    assert ("errors" not in body) is check_ok, body


async def test_agency_may_not_order(api: Api) -> None:
    agency = await make_partner(api.db, "P-AG", PartnerKind.AGENCY)
    tok = await make_token(api.db, agency, Role.ADMIN)
    await api.gql('mutation { linkAccount(input: {uid: "AG"}) { userErrors { code } } }', token=tok)
    body = await api.gql(
        'mutation { placeOrder(input: {uid: "AG", billingMethod: PAYG, amount: "0", idempotencyKey: "p"}) '
        "{ decision { allowed } } }",
        token=tok,
        errors=True,
    )
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    async with api.db.read() as session:
        assert (await session.scalars(select(Instance))).all() == []
        assert [e.action.value for e in (await session.scalars(select(AuditEntry))).all()] == ["ACCOUNT_LINKED"]

"""Authentication, the role table and tenancy, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import update

from tests.support.accounts import (
    LINK,
    STATUS,
    UPDATE,
    audit_of,
    change_status,
    link,
    one,
    token_for,
    update_info,
)
from tests.support.api import Api, make_partner, make_token
from uidhub.models import ApiToken
from uidhub.models.enums import PartnerKind, Role
from uidhub.resolvers.auth import hash_token


def forbidden(body: dict, field: str) -> None:
    assert body["data"] is None or body["data"].get(field) is None, body
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"], body


# ---------------------------------------------------------------- authentication


async def test_missing_or_invalid_token_is_401(api: Api) -> None:
    revoked = await token_for(api)
    async with api.db.write() as session:
        await session.execute(
            update(ApiToken).values(revoked_at=datetime.now(UTC)).where(ApiToken.token_hash == hash_token(revoked))
        )
    cases = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic " + api.tokens["admin"]},
        {"Authorization": api.tokens["admin"]},
        {"Authorization": "Bearer " + "x" * 5000},
        {"Authorization": "Bearer " + revoked},
    ]
    for headers in cases:
        response = await api.client.post("/graphql", json={"query": "{ viewer { method } }"}, headers=headers)
        assert response.status_code == 401, headers
        body = response.json()
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert body.get("data") is None
    response = await api.client.post(
        "/graphql", json={"query": "{ viewer { method } }"}, headers={"Authorization": "bearer " + api.tokens["admin"]}
    )
    assert response.status_code == 200 and response.json()["data"]["viewer"]["method"] == "PLATFORM"


async def test_mutation_without_token_changes_nothing(api: Api) -> None:
    response = await api.client.post("/graphql", json={"query": LINK, "variables": {"input": {"uid": "U1"}}})
    assert response.status_code == 401
    assert await one(api, "U1") is None


# ---------------------------------------------------------------- the role table


async def test_viewer_reads_only(api: Api) -> None:
    await link(api, "U1")
    viewer = await token_for(api, Role.VIEWER)
    assert (await one(api, "U1")) is not None
    data = await api.gql('{ endUsers { totalCount } endUser(uid: "U1") { uid } summary { accounts } }', token=viewer)
    assert data["endUsers"]["totalCount"] == 1
    body = await api.gql(LINK, {"input": {"uid": "U2"}}, token=viewer, errors=True)
    forbidden(body, "linkAccount")
    body = await api.gql(UPDATE, {"input": {"uid": "U1", "nickname": "x"}}, token=viewer, errors=True)
    forbidden(body, "updateBasicInfo")
    body = await api.gql(STATUS, {"uid": "U1", "status": "TO_BE_CONFIRMED"}, token=viewer, errors=True)
    forbidden(body, "changeAccountStatus")
    assert await one(api, "U2") is None
    assert (await one(api, "U1"))["nickname"] is None  # type: ignore[index]


async def test_billing_cannot_change_accounts(api: Api) -> None:
    await link(api, "U1")
    billing = await token_for(api, Role.BILLING)
    forbidden(await api.gql(LINK, {"input": {"uid": "U2"}}, token=billing, errors=True), "linkAccount")
    forbidden(
        await api.gql(UPDATE, {"input": {"uid": "U1", "remarks": "x"}}, token=billing, errors=True), "updateBasicInfo"
    )
    forbidden(
        await api.gql(STATUS, {"uid": "U1", "status": "TO_BE_CONFIRMED"}, token=billing, errors=True),
        "changeAccountStatus",
    )
    assert (await api.gql('{ endUser(uid: "U1") { uid } }', token=billing))["endUser"] == {"uid": "U1"}


async def test_operator_changes_accounts(api: Api) -> None:
    operator = await token_for(api, Role.OPERATOR)
    await link(api, "U1", token=operator)
    assert (await update_info(api, "U1", token=operator, businessManager="bm"))["userErrors"] == []
    assert (await change_status(api, "U1", "TO_BE_CONFIRMED", token=operator))["userErrors"] == []


async def test_agency_partner(api: Api) -> None:
    agency = await make_partner(api.db, "P-AGENCY", PartnerKind.AGENCY)
    for role in (Role.ADMIN, Role.OPERATOR):
        token = await make_token(api.db, agency, role)
        uid = f"AG-{role.value}"
        await link(api, uid, token=token, nickname="n")
        payload = await update_info(api, uid, token=token, nickname="new nick", remarks="new remarks")
        assert payload["userErrors"] == []
        assert payload["endUser"]["nickname"] == "new nick" and payload["endUser"]["remarks"] == "new remarks"

        before = (
            await api.gql(
                "query($u: String!) { endUser(uid: $u) { nickname businessManager remarks } }", {"u": uid}, token=token
            )
        )["endUser"]
        audit_q = "query($u: String!) { auditEntries(uid: $u) { totalCount } }"
        entries_before = (await api.gql(audit_q, {"u": uid}, token=token))["auditEntries"]["totalCount"]
        payload = await update_info(api, uid, token=token, businessManager="Zhang", nickname="changed?")
        assert payload["endUser"] is None
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [("FORBIDDEN", ["input", "businessManager"])]
        after = (
            await api.gql(
                "query($u: String!) { endUser(uid: $u) { nickname businessManager remarks } }", {"u": uid}, token=token
            )
        )["endUser"]
        assert after == before, "nothing changed, nickname included"
        assert (await api.gql(audit_q, {"u": uid}, token=token))["auditEntries"]["totalCount"] == entries_before
        # Even clearing the business manager is refused.
        payload = await update_info(api, uid, token=token, businessManager=None)
        assert [e["code"] for e in payload["userErrors"]] == ["FORBIDDEN"]

        body = await api.gql(STATUS, {"uid": uid, "status": "TO_BE_CONFIRMED"}, token=token, errors=True)
        forbidden(body, "changeAccountStatus")
        # An initial quota is forbidden to agencies, and nothing is linked.
        payload = (await api.gql(LINK, {"input": {"uid": uid + "-Q", "quotaAmount": "1.00"}}, token=token))[
            "linkAccount"
        ]
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [("FORBIDDEN", ["input", "quotaAmount"])]
        assert (await api.gql("query($u: String!) { endUser(uid: $u) { uid } }", {"u": uid + "-Q"}, token=token))[
            "endUser"
        ] is None


async def test_agency_end_user_may_confirm(api: Api) -> None:
    agency = await make_partner(api.db, "P-AGENCY", PartnerKind.AGENCY)
    admin = await make_token(api.db, agency, Role.ADMIN)
    await link(api, "AG1", token=admin)
    # The partner's operators may not change status; set it up directly.
    from tests.support.accounts import set_account

    await set_account(api, "AG1", status="TO_BE_CONFIRMED")
    end_user = await make_token(api.db, agency, Role.END_USER, account_uid="AG1")
    payload = await change_status(api, "AG1", "IN_PROCESS", token=end_user)
    assert payload["userErrors"] == [] and payload["endUser"]["accountStatus"] == "IN_PROCESS"


# ---------------------------------------------------------------- END_USER tokens


async def test_end_user_sees_own_account_and_subs_only(api: Api) -> None:
    await link(api, "M1")
    await link(api, "S1", masterUid="M1")
    await link(api, "S2", masterUid="M1")
    await link(api, "M2")
    await link(api, "S3", masterUid="M2")
    master_token = await token_for(api, Role.END_USER, account_uid="M1")
    sub_token = await token_for(api, Role.END_USER, account_uid="S1")
    ids = {
        e["node"]["uid"]: e["node"]["id"]
        for e in (await api.gql("{ endUsers { edges { node { id uid } } } }"))["endUsers"]["edges"]
    }

    q = "{ endUsers(orderBy: {field: UID}) { totalCount edges { node { uid master { uid } subAccounts { uid } } } } }"
    data = (await api.gql(q, token=master_token))["endUsers"]
    assert data["totalCount"] == 3
    assert [e["node"]["uid"] for e in data["edges"]] == ["M1", "S1", "S2"]
    assert data["edges"][0]["node"]["subAccounts"] == [{"uid": "S1"}, {"uid": "S2"}]
    assert data["edges"][1]["node"]["master"] == {"uid": "M1"}

    data = (await api.gql(q, token=sub_token))["endUsers"]
    assert data["totalCount"] == 1
    assert data["edges"] == [{"node": {"uid": "S1", "master": None, "subAccounts": []}}]

    node_q = "query($id: ID!) { node(id: $id) { ... on EndUser { uid } } }"
    for token, visible in ((master_token, {"M1", "S1", "S2"}), (sub_token, {"S1"})):
        for uid, gid in ids.items():
            got = (await api.gql("query($u: String!) { endUser(uid: $u) { uid } }", {"u": uid}, token=token))["endUser"]
            assert (got is not None) is (uid in visible), uid
            node = (await api.gql(node_q, {"id": gid}, token=token))["node"]
            assert (node is not None) is (uid in visible), uid
    summary = (await api.gql("{ summary { accounts } }", token=sub_token))["summary"]
    assert summary["accounts"] == 1
    # Audit entries: only its own accounts'.
    entries = (
        await api.gql(
            "{ auditEntries(first: 100) { totalCount edges { node { account { uid } } } } }", token=master_token
        )
    )["auditEntries"]
    assert {e["node"]["account"]["uid"] for e in entries["edges"]} == {"M1", "S1", "S2"}
    assert entries["totalCount"] == 3
    data = await api.gql('{ auditEntries(uid: "M2") { totalCount edges { cursor } } }', token=master_token)
    assert data["auditEntries"] == {"totalCount": 0, "edges": []}


async def test_end_user_may_only_confirm_own_termination(api: Api) -> None:
    await link(api, "M1")
    await link(api, "S1", masterUid="M1")
    await link(api, "M2")
    token = await token_for(api, Role.END_USER, account_uid="M1")
    forbidden(await api.gql(LINK, {"input": {"uid": "U9"}}, token=token, errors=True), "linkAccount")
    forbidden(
        await api.gql(UPDATE, {"input": {"uid": "M1", "nickname": "x"}}, token=token, errors=True), "updateBasicInfo"
    )

    # NORMAL → TO_BE_CONFIRMED is the partner's step, not the end user's.
    payload = await change_status(api, "M1", "TO_BE_CONFIRMED", token=token)
    assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [("FORBIDDEN", ["input", "status"])]
    await change_status(api, "M1", "TO_BE_CONFIRMED")
    await change_status(api, "M2", "TO_BE_CONFIRMED")
    # Cancelling is not confirming.
    payload = await change_status(api, "M1", "NORMAL", token=token)
    assert [e["code"] for e in payload["userErrors"]] == ["FORBIDDEN"]
    # Another account: it does not exist for this token.
    payload = await change_status(api, "M2", "IN_PROCESS", token=token)
    assert [e["code"] for e in payload["userErrors"]] == ["NOT_FOUND"]
    assert (await one(api, "M2"))["accountStatus"] == "TO_BE_CONFIRMED"  # type: ignore[index]
    # Its sub-account is visible but not its own account to confirm.
    payload = await change_status(api, "S1", "IN_PROCESS", token=token)
    assert [e["code"] for e in payload["userErrors"]] == ["FORBIDDEN"]

    payload = await change_status(api, "M1", "IN_PROCESS", token=token)
    assert payload["userErrors"] == [] and payload["endUser"]["accountStatus"] == "IN_PROCESS"
    assert payload["endUser"]["subAccounts"] == [{"uid": "S1", "accountStatus": "IN_PROCESS"}]
    entry = (await audit_of(api, "M1"))[0]
    assert entry["operator"]["role"] == "END_USER" and entry["operator"]["uid"] == "M1"
    payload = await change_status(api, "M1", "TERMINATED", token=token)
    assert [e["code"] for e in payload["userErrors"]] == ["FORBIDDEN"]


# ---------------------------------------------------------------- tenancy


async def test_other_partners_accounts_do_not_exist(api: Api) -> None:
    await link(api, "X1", as_="other", nickname="theirs")
    await link(api, "XS", as_="other", masterUid="X1")
    await link(api, "M1")
    theirs = (await api.gql('{ endUser(uid: "X1") { id auditEntries { edges { node { id } } } } }', as_="other"))[
        "endUser"
    ]
    x1_id = theirs["id"]
    entry_id = theirs["auditEntries"]["edges"][0]["node"]["id"]

    assert await one(api, "X1") is None
    assert (await api.gql("{ endUsers { totalCount } }"))["endUsers"]["totalCount"] == 1
    assert (await api.gql('{ endUsers(filter: {uids: ["X1", "XS"]}) { totalCount } }'))["endUsers"]["totalCount"] == 0
    assert (await api.gql('{ endUsers(filter: {search: "X"}) { totalCount } }'))["endUsers"]["totalCount"] == 0
    assert (await api.gql("query($id: ID!) { node(id: $id) { id } }", {"id": x1_id}))["node"] is None
    assert (await api.gql("query($id: ID!) { node(id: $id) { id } }", {"id": entry_id}))["node"] is None
    data = await api.gql('{ auditEntries(uid: "X1") { totalCount edges { cursor } } }')
    assert data["auditEntries"] == {"totalCount": 0, "edges": []}
    data = await api.gql("{ auditEntries(first: 100) { edges { node { account { uid } } } } }")
    assert {e["node"]["account"]["uid"] for e in data["auditEntries"]["edges"]} == {"M1"}

    for payload, code in [
        (await update_info(api, "X1", nickname="mine"), "NOT_FOUND"),
        (await change_status(api, "X1", "TO_BE_CONFIRMED"), "NOT_FOUND"),
        (await link(api, "S1", masterUid="X1", expect_ok=False), "NOT_FOUND"),
    ]:
        assert [e["code"] for e in payload["userErrors"]] == [code]
    assert (await one(api, "X1", as_="other")) == {
        "uid": "X1",
        "nickname": "theirs",
        "businessManager": None,
        "remarks": None,
        "accountStatus": "NORMAL",
    }
    assert (await api.gql("{ summary { accounts } }"))["summary"]["accounts"] == 1

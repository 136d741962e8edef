"""Audit entries through the GraphQL API, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from tests.support.accounts import audit_of, change_status, link, token_for, update_info
from tests.support.api import Api
from uidhub.models import Account
from uidhub.models import AuditEntry as AuditRow
from uidhub.models.enums import AuditAction, OperationMethod, Role
from uidhub.resolvers import audit as audit_ops
from uidhub.resolvers.auth import authenticate

ENTRY = (
    "id action occurredAt method before after reason cascadeFrom { uid } account { uid } "
    "operator { uid name isRamAccount role }"
)


async def test_link_update_and_status_entries(api: Api) -> None:
    await link(api, "M1", nickname="Master", email="m@example.com", accountType="ENTERPRISE")
    await link(api, "S1", masterUid="M1")
    [linked] = await audit_of(api, "M1")
    assert linked["action"] == "ACCOUNT_LINKED"
    assert linked["before"] is None
    assert linked["after"] == {
        "uid": "M1",
        "accountType": "ENTERPRISE",
        "nickname": "Master",
        "email": "m@example.com",
        "masterUid": None,
    }
    assert linked["method"] == "PLATFORM" and linked["reason"] is None and linked["cascadeFrom"] is None
    assert linked["operator"] == {"uid": "P-MAIN", "name": "Partner P-MAIN", "isRamAccount": False, "role": "ADMIN"}
    assert (await audit_of(api, "S1"))[0]["after"]["masterUid"] == "M1"

    await update_info(api, "M1", nickname="Master", remarks="r1", businessManager="bm")
    entry = (await audit_of(api, "M1"))[0]
    assert entry["action"] == "BASIC_INFO_UPDATED"
    assert entry["before"] == {"businessManager": None, "remarks": None}, "only what changed"
    assert entry["after"] == {"businessManager": "bm", "remarks": "r1"}
    await update_info(api, "M1", nickname=None)
    entry = (await audit_of(api, "M1"))[0]
    assert (entry["before"], entry["after"]) == ({"nickname": "Master"}, {"nickname": None})
    # The same values again: nothing changed, no entry.
    count = len(await audit_of(api, "M1"))
    assert (await update_info(api, "M1", remarks="r1", businessManager="bm"))["userErrors"] == []
    assert len(await audit_of(api, "M1")) == count

    await change_status(api, "M1", "TO_BE_CONFIRMED")
    [master_entry] = (await audit_of(api, "M1"))[:1]
    [sub_entry] = (await audit_of(api, "S1"))[:1]
    for entry in (master_entry, sub_entry):
        assert entry["action"] == "ACCOUNT_STATUS_CHANGED"
        assert (entry["before"], entry["after"]) == ({"accountStatus": "NORMAL"}, {"accountStatus": "TO_BE_CONFIRMED"})
    assert master_entry["cascadeFrom"] is None
    assert sub_entry["cascadeFrom"] == {"uid": "M1"} and sub_entry["account"] == {"uid": "S1"}


async def test_failed_change_writes_no_entry(api: Api) -> None:
    await link(api, "U1")
    before = len(await audit_of(api, "U1"))
    await update_info(api, "U1", nickname="x" * 151)
    await change_status(api, "U1", "TERMINATED")
    await link(api, "U1", expect_ok=False)
    assert len(await audit_of(api, "U1")) == before


async def test_operator_and_method(api: Api) -> None:
    ram_api = await token_for(api, Role.OPERATOR, method=OperationMethod.API, is_ram=True, operator_uid="RAM-7")
    await link(api, "U1", token=ram_api)
    entry = (await audit_of(api, "U1"))[0]
    assert entry["method"] == "API"
    assert entry["operator"] == {"uid": "RAM-7", "name": "Partner P-MAIN", "isRamAccount": True, "role": "OPERATOR"}
    viewer = (await api.gql("{ viewer { operator { uid isRamAccount role } method } }", token=ram_api))["viewer"]
    assert viewer == {"operator": {"uid": "RAM-7", "isRamAccount": True, "role": "OPERATOR"}, "method": "API"}

    await update_info(api, "U1", remarks="by main")
    entry = (await audit_of(api, "U1"))[0]
    assert entry["method"] == "PLATFORM"
    assert entry["operator"]["uid"] == "P-MAIN" and entry["operator"]["isRamAccount"] is False


async def test_reason_and_system_entries(api: Api) -> None:
    """`reason` and SYSTEM entries (no operator) as written by `resolvers.audit.record`."""
    await link(api, "U1")
    async with api.db.write() as session:
        actor = await authenticate(session, api.tokens["admin"])
        account = await session.scalar(select(Account).where(Account.uid == "U1"))
        assert actor is not None and account is not None
        audit_ops.record(
            session,
            actor,
            account,
            AuditAction.PAYG_FROZEN,
            before={"paygFreezeStatus": "NORMAL"},
            after={"paygFreezeStatus": "FROZEN"},
            reason="unpaid invoice",
        )
        audit_ops.record(session, None, account, AuditAction.CREDIT_CONTROL_CHANGED)
    system, frozen = (await audit_of(api, "U1"))[:2]
    assert frozen["reason"] == "unpaid invoice" and frozen["action"] == "PAYG_FROZEN"
    assert system["method"] == "SYSTEM" and system["operator"] is None


async def seed_entries(api: Api) -> list[str]:
    """U0..U4 linked, U0 edited twice; returns the UIDs."""
    uids = [f"U{i}" for i in range(5)]
    for uid in uids:
        await link(api, uid)
    await update_info(api, "U0", nickname="a")
    await update_info(api, "U0", nickname="b")
    await link(api, "X1", as_="other")
    return uids


async def test_audit_entries_filters(api: Api) -> None:
    await seed_entries(api)
    q = """query($uid: String, $actions: [AuditAction!], $since: DateTime, $until: DateTime) {
      auditEntries(first: 100, uid: $uid, actions: $actions, since: $since, until: $until) {
        totalCount edges { node { action account { uid } after } } } }"""

    async def entries(**variables: object) -> list[tuple[str, str]]:
        data = (await api.gql(q, variables))["auditEntries"]
        assert data["totalCount"] == len(data["edges"])
        return [(e["node"]["account"]["uid"], e["node"]["action"]) for e in data["edges"]]

    everything = await entries()
    assert len(everything) == 7
    assert everything[0] == ("U0", "BASIC_INFO_UPDATED"), "newest first"
    assert everything[-1] == ("U0", "ACCOUNT_LINKED")
    assert await entries(uid="U0") == [("U0", "BASIC_INFO_UPDATED")] * 2 + [("U0", "ACCOUNT_LINKED")]
    assert await entries(uid="NOPE") == []
    assert await entries(uid="X1") == []
    assert await entries(actions=["BASIC_INFO_UPDATED"]) == [("U0", "BASIC_INFO_UPDATED")] * 2
    assert len(await entries(actions=["ACCOUNT_LINKED", "BASIC_INFO_UPDATED"])) == 7
    assert await entries(actions=["ACCOUNT_STATUS_CHANGED"]) == []
    assert await entries(uid="U1", actions=["BASIC_INFO_UPDATED"]) == []

    # Place the entries in time: U_i's link on day i, U0's edits on days 10 and 11.
    t0 = datetime(2025, 3, 1, tzinfo=UTC)
    async with api.db.write() as session:
        rows = (await session.scalars(select(AuditRow).order_by(AuditRow.id))).all()
        for i, row in enumerate(rows):
            day = i if row.action is AuditAction.ACCOUNT_LINKED else 10 + (i - 5)
            await session.execute(
                update(AuditRow).where(AuditRow.id == row.id).values(occurred_at=t0 + timedelta(days=day))
            )
    since = (t0 + timedelta(days=2)).isoformat()
    until = (t0 + timedelta(days=4)).isoformat()
    assert await entries(since=since, until=until) == [("U3", "ACCOUNT_LINKED"), ("U2", "ACCOUNT_LINKED")]
    assert len(await entries(since=(t0 + timedelta(days=10)).isoformat())) == 2
    assert len(await entries(until="2025-03-01T08:00:01+08:00")) == 1  # = t0 + 1s, in UTC+8
    assert await entries(uid="U0", since=since) == [("U0", "BASIC_INFO_UPDATED")] * 2
    assert await entries(since=until, until=since) == []
    body = await api.gql(q, {"since": "2025-03-01T00:00:00"}, errors=True)
    assert body["errors"], "a DateTime without offset is refused"


async def test_audit_entries_pagination(api: Api) -> None:
    await seed_entries(api)
    q = """query($first: Int, $after: String) { auditEntries(first: $first, after: $after) {
      totalCount edges { cursor node { id } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"""
    full = [e["node"]["id"] for e in (await api.gql(q, {"first": 100}))["auditEntries"]["edges"]]
    walked: list[str] = []
    after = None
    for _ in range(10):
        page = (await api.gql(q, {"first": 2, "after": after}))["auditEntries"]
        assert page["totalCount"] == 7
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        walked += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert walked == full and len(walked) == 7
    # New entries do not shift a page already being read.
    first_page = (await api.gql(q, {"first": 3}))["auditEntries"]
    await update_info(api, "U4", remarks="new")
    rest = (await api.gql(q, {"first": 100, "after": first_page["pageInfo"]["endCursor"]}))["auditEntries"]
    assert [e["node"]["id"] for e in rest["edges"]] == full[3:]
    for variables in ({"first": 101}, {"after": "garbage"}, {"first": -5}):
        body = await api.gql(q, variables, errors=True)
        assert body["data"] is None and body["errors"], variables
    data = await api.gql(
        "query($a: [AuditAction!]) { auditEntries(actions: $a) { totalCount } }",
        {"a": ["ACCOUNT_LINKED"] * 101},
        errors=True,
    )
    assert data["errors"]


async def test_end_user_audit_entries(api: Api) -> None:
    await seed_entries(api)
    q = """query($uid: String!, $first: Int, $after: String, $actions: [AuditAction!]) { endUser(uid: $uid) {
      auditEntries(first: $first, after: $after, actions: $actions) {
        totalCount edges { cursor node { action after account { uid } } }
        pageInfo { hasNextPage hasPreviousPage endCursor } } } }"""
    data = (await api.gql(q, {"uid": "U0"}))["endUser"]["auditEntries"]
    assert data["totalCount"] == 3
    assert [e["node"]["after"] for e in data["edges"]][:2] == [{"nickname": "b"}, {"nickname": "a"}]
    page = (await api.gql(q, {"uid": "U0", "first": 1}))["endUser"]["auditEntries"]
    assert page["totalCount"] == 3 and page["pageInfo"]["hasNextPage"] is True
    assert page["pageInfo"]["hasPreviousPage"] is False
    page2 = (await api.gql(q, {"uid": "U0", "first": 5, "after": page["pageInfo"]["endCursor"]}))["endUser"][
        "auditEntries"
    ]
    assert [e["node"]["after"].get("nickname") for e in page2["edges"]] == ["a", None]
    assert page2["pageInfo"]["hasNextPage"] is False and page2["pageInfo"]["hasPreviousPage"] is True
    linked = (await api.gql(q, {"uid": "U0", "actions": ["ACCOUNT_LINKED"]}))["endUser"]["auditEntries"]
    assert linked["totalCount"] == 1 and linked["edges"][0]["node"]["action"] == "ACCOUNT_LINKED"
    body = await api.gql(q, {"uid": "U0", "first": 101}, errors=True)
    assert body["errors"]
    # Each account in a list gets its own entries.
    data = await api.gql(
        "{ endUsers(first: 10, orderBy: {field: UID}) { edges { node { uid "
        "auditEntries(first: 1) { totalCount edges { node { account { uid } } } } } } } }"
    )
    for edge in data["endUsers"]["edges"]:
        entries = edge["node"]["auditEntries"]
        assert entries["totalCount"] == (3 if edge["node"]["uid"] == "U0" else 1)
        assert [e["node"]["account"]["uid"] for e in entries["edges"]] == [edge["node"]["uid"]]

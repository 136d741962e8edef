"""Temporary credit: the grant, the scheduled revert (worker, start-up, several workers), revoking, rules, lists."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from tests.support.accounts import link
from tests.support.api import Api, make_partner, make_token
from tests.support.db import StatementCounter
from tests.support.quota import SET_THRESHOLD, balance, change_status, partner_row, quota, set_amount, snapshot
from uidhub.app import create_app
from uidhub.background import TemporaryCreditWorker
from uidhub.db import Database
from uidhub.models import Account, Partner, QuotaAdjustment, QuotaPool, TemporaryCredit
from uidhub.models.enums import AccountType, OperationMethod, PartnerKind, Role, TemporaryCreditStatus
from uidhub.schema.common import from_global_id, to_global_id
from uidhub.settings import Settings

CREDIT_FIELDS = (
    "id amount until reason status grantedAt method operator { uid role } endedAt revertedAmount endedBy { uid role }"
)
GRANT = f"""mutation($i: GrantTemporaryCreditInput!) {{ grantTemporaryCredit(input: $i) {{
  temporaryCredit {{ {CREDIT_FIELDS} }}
  quota {{ amount available temporaryCredits {{ id amount }} }}
  userErrors {{ code message field }} }} }}"""
REVOKE = f"""mutation($i: RevokeTemporaryCreditInput!) {{ revokeTemporaryCredit(input: $i) {{
  temporaryCredit {{ {CREDIT_FIELDS} }}
  quota {{ amount available temporaryCredits {{ id }} }}
  userErrors {{ code message field }} }} }}"""
CREDITS = f"query($u: String!) {{ endUser(uid: $u) {{ quota {{ amount temporaryCredits {{ {CREDIT_FIELDS} }} }} }} }}"
HISTORY = """query($u: String!) {
  endUser(uid: $u) { quota { adjustments(first: 10) { edges { node { operationType before value after method
    reason operator { uid } } } } } }
  auditEntries(uid: $u, first: 20) { edges { node { action method reason before after } } } }"""
EVENTS = "{ alertEvents(first: 20) { edges { node { kind state available threshold account { uid } } } } }"


def iso(moment: datetime) -> str:
    return moment.isoformat()


async def grant(
    api: Api,
    uid: str,
    amount: str,
    reason: str = "Q4 campaign",
    *,
    until: datetime | None = None,
    hours: int | None = None,
    key: str | None = None,
    **kw: Any,
) -> dict[str, Any]:
    if until is None and hours is None:
        hours = 1
    variables = {
        "i": {
            "uid": uid,
            "amount": amount,
            "reason": reason,
            "until": iso(until) if until else None,
            "durationHours": hours,
            "idempotencyKey": key,
        }
    }
    return (await api.gql(GRANT, variables, **kw))["grantTemporaryCredit"]


async def revoke(api: Api, credit_id: str, **kw: Any) -> dict[str, Any]:
    return (await api.gql(REVOKE, {"i": {"id": credit_id}}, **kw))["revokeTemporaryCredit"]


async def history(api: Api, uid: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    data = await api.gql(HISTORY, {"u": uid})
    records = [e["node"] for e in data["endUser"]["quota"]["adjustments"]["edges"]]
    entries = [e["node"] for e in data["auditEntries"]["edges"] if e["node"]["action"] != "CREDIT_CONTROL_CHANGED"]
    return records, entries


async def credit_rows(db: Database) -> list[TemporaryCredit]:
    async with db.read() as session:
        return list((await session.scalars(select(TemporaryCredit).order_by(TemporaryCredit.id))).all())


async def system_records(db: Database) -> int:
    async with db.read() as session:
        query = select(func.count()).where(QuotaAdjustment.method == OperationMethod.SYSTEM)
        return int(await session.scalar(query) or 0)


def later(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


def worker(db: Database, at: datetime, **kw: Any) -> TemporaryCreditWorker:
    """A worker whose clock stands at `at` (instead of waiting for a grant's end)."""
    return TemporaryCreditWorker(db, clock=lambda: at, **kw)


async def full_snapshot(api: Api) -> tuple[Any, ...]:
    return (await snapshot(api), [(c.id, c.status, c.amount_cents) for c in await credit_rows(api.db)])


# ---------------------------------------------------------------- the grant


async def test_grant_raises_the_amount_with_a_record_and_an_audit_entry(api: Api) -> None:
    await link(api, "U1", quotaAmount="1000.00")
    until = later(days=3).replace(microsecond=0)
    payload = await grant(api, "U1", "500.00", "Q4 campaign", until=until)
    assert payload["userErrors"] == []
    credit = payload["temporaryCredit"]
    assert (credit["amount"], credit["reason"], credit["status"]) == ("500.00", "Q4 campaign", "ACTIVE")
    assert datetime.fromisoformat(credit["until"]) == until
    assert credit["method"] == "PLATFORM" and credit["operator"] == {"uid": "P-MAIN", "role": "ADMIN"}
    assert credit["endedAt"] is None and credit["revertedAmount"] is None and credit["endedBy"] is None
    assert payload["quota"]["amount"] == "1500.00" and payload["quota"]["available"] == "1500.00"
    assert payload["quota"]["temporaryCredits"] == [{"id": credit["id"], "amount": "500.00"}]

    data = await api.gql(CREDITS, {"u": "U1"})
    assert data["endUser"]["quota"]["amount"] == "1500.00"
    assert [c["id"] for c in data["endUser"]["quota"]["temporaryCredits"]] == [credit["id"]]
    node = await api.gql(
        "query($id: ID!) { node(id: $id) { ... on TemporaryCredit { amount status } } }", {"id": credit["id"]}
    )
    assert node["node"] == {"amount": "500.00", "status": "ACTIVE"}
    other = await api.gql("query($id: ID!) { node(id: $id) { id } }", {"id": credit["id"]}, as_="other")
    assert other["node"] is None

    records, entries = await history(api, "U1")
    assert (records[0]["operationType"], records[0]["before"], records[0]["value"], records[0]["after"]) == (
        "QUOTA_ADJUSTMENT",
        "1000.00",
        "500.00",
        "1500.00",
    )
    assert records[0]["method"] == "PLATFORM" and "Q4 campaign" in records[0]["reason"]
    assert records[1]["reason"] is None  # an ordinary change has none
    assert entries[0]["action"] == "QUOTA_ADJUSTED" and entries[0]["method"] == "PLATFORM"
    assert "Q4 campaign" in entries[0]["reason"]
    assert entries[0]["after"]["amount"] == "1500.00"
    assert entries[0]["after"]["temporaryCredit"]["amount"] == "500.00"


async def test_grant_is_idempotent_with_a_key(api: Api) -> None:
    await link(api, "U1", quotaAmount="100.00")
    first = await grant(api, "U1", "50.00", key="tc-1", hours=24)
    before = await full_snapshot(api)
    again = await grant(api, "U1", "50.00", key="tc-1", hours=24)
    assert again == first
    assert await full_snapshot(api) == before
    conflict = await grant(api, "U1", "60.00", key="tc-1", hours=24)
    assert [e["code"] for e in conflict["userErrors"]] == ["IDEMPOTENCY_CONFLICT"]
    assert await full_snapshot(api) == before
    assert (await quota(api, "U1"))["amount"] == "150.00"


# ---------------------------------------------------------------- the revert


async def test_the_worker_reverts_at_until_once(api: Api) -> None:
    await link(api, "U1", quotaAmount="1000.00")
    credit = (await grant(api, "U1", "500.00", "launch week", hours=1))["temporaryCredit"]
    assert await worker(api.db, later(minutes=30)).run_once() == 0
    assert (await quota(api, "U1"))["amount"] == "1500.00"

    assert await worker(api.db, later(hours=2)).run_once() == 1
    q = await quota(api, "U1")
    assert q["amount"] == "1000.00" and q["available"] == "1000.00"
    data = await api.gql(CREDITS, {"u": "U1"})
    assert data["endUser"]["quota"]["temporaryCredits"] == []
    node = (
        await api.gql(
            f"query($id: ID!) {{ node(id: $id) {{ ... on TemporaryCredit {{ {CREDIT_FIELDS} }} }} }}",
            {"id": credit["id"]},
        )
    )["node"]
    assert node["status"] == "EXPIRED" and node["revertedAmount"] == "500.00" and node["endedBy"] is None
    assert node["endedAt"] is not None

    records, entries = await history(api, "U1")
    newest = records[0]
    assert (newest["before"], newest["value"], newest["after"], newest["method"]) == (
        "1500.00",
        "-500.00",
        "1000.00",
        "SYSTEM",
    )
    assert newest["operator"] is None and "launch week" in newest["reason"]
    assert entries[0]["action"] == "QUOTA_ADJUSTED" and entries[0]["method"] == "SYSTEM"
    assert "launch week" in entries[0]["reason"]
    assert entries[0]["after"]["temporaryCredit"]["status"] == "EXPIRED"

    before = await full_snapshot(api)
    assert await worker(api.db, later(days=400)).run_once() == 0
    assert await full_snapshot(api) == before


async def test_the_revert_re_evaluates_thresholds(api: Api) -> None:
    await link(api, "U1", quotaAmount="1000.00")
    await api.gql(SET_THRESHOLD, {"i": {"uid": "U1", "percent": 50}})
    await grant(api, "U1", "1000.00", hours=1)  # amount 2000, level 1000
    await balance(api, "record", "U1", "700.00", "c-1")  # available 1300: above the level
    assert (await api.gql(EVENTS))["alertEvents"]["edges"] == []
    await worker(api.db, later(hours=2)).run_once()  # amount 1000, level 500, available 300
    events = [e["node"] for e in (await api.gql(EVENTS))["alertEvents"]["edges"]]
    assert events == [
        {
            "kind": "QUOTA_WARNING",
            "state": "BREACHED",
            "available": "300.00",
            "threshold": "500.00",
            "account": {"uid": "U1"},
        }
    ]
    data = await api.gql("{ notifications(first: 5) { edges { node { subject } } } }")
    assert len(data["notifications"]["edges"]) == 1  # the breach's email, queued with the revert


async def test_the_revert_re_evaluates_credit_control(api: Api) -> None:
    await link(api, "U1", quotaAmount="100.00")
    await grant(api, "U1", "100.00", hours=1)
    await balance(api, "record", "U1", "150.00", "c-1")  # available 50
    status = '{ endUser(uid: "U1") { policy { creditControlStatus } } }'
    assert (await api.gql(status))["endUser"]["policy"]["creditControlStatus"] == "NORMAL"
    await worker(api.db, later(hours=2)).run_once()  # available -50
    assert (await api.gql(status))["endUser"]["policy"]["creditControlStatus"] == "SHUTDOWN"
    assert (await quota(api, "U1"))["outstandingAmount"] == "50.00"


async def test_the_revert_takes_off_the_grant_from_the_amount_as_it_is_then(api: Api) -> None:
    await link(api, "UP", quotaAmount="1000.00")
    await grant(api, "UP", "500.00", hours=1)
    await set_amount(api, "UP", "2000.00")  # an operator raised it meanwhile: kept
    await link(api, "DOWN", quotaAmount="1000.00")
    lowered = (await grant(api, "DOWN", "500.00", "short", hours=1))["temporaryCredit"]
    await set_amount(api, "DOWN", "300.00")  # lowered below the grant: the revert stops at 0.00
    assert await worker(api.db, later(hours=2)).run_once() == 2
    assert (await quota(api, "UP"))["amount"] == "1500.00"
    assert (await quota(api, "DOWN"))["amount"] == "0.00"
    node = (
        await api.gql(
            "query($id: ID!) { node(id: $id) { ... on TemporaryCredit { revertedAmount } } }", {"id": lowered["id"]}
        )
    )["node"]
    assert node == {"revertedAmount": "300.00"}
    records, entries = await history(api, "DOWN")
    assert records[0]["value"] == "-300.00" and "took off 300.00 of 500.00" in records[0]["reason"]
    assert entries[0]["after"]["temporaryCredit"]["reverted"] == "300.00"


async def test_a_grant_of_a_terminated_account_is_closed_without_a_revert(api: Api) -> None:
    await link(api, "U1", quotaAmount="100.00")
    await grant(api, "U1", "50.00", hours=1)
    statuses = await change_status(api, "U1", "TO_BE_CONFIRMED", "IN_PROCESS", "TERMINATED")
    assert all(s["userErrors"] == [] for s in statuses), statuses
    records_before = await system_records(api.db)
    assert await worker(api.db, later(hours=2)).run_once() == 1
    (row,) = await credit_rows(api.db)
    assert row.status is TemporaryCreditStatus.EXPIRED and row.reverted_cents == 0
    assert await system_records(api.db) == records_before
    assert (await quota(api, "U1"))["amount"] == "150.00"


# ---------------------------------------------------------------- exactly once: start-up, several workers


@contextlib.asynccontextmanager
async def server(db: Database, tmp_path: Path) -> AsyncIterator[None]:
    """A server process over `db`'s database: the app with its lifespan (its background loops) running."""
    own = Database(db.url)
    settings = Settings(database_url=db.url, export_dir=str(tmp_path / "exports"), temporary_credit_poll_seconds=0.05)
    app = create_app(settings, db=own)
    async with app.router.lifespan_context(app):
        yield


async def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    """Poll `condition()` until true; the timeout is only a hang guard."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"hang guard: {what}"
        await asyncio.sleep(0.05)


async def lapse(db: Database, credit_global_id: str) -> None:
    """Move a grant's end into the past, as if the server had been down when it came."""
    pk = _pk(credit_global_id)
    async with db.write() as session:
        await session.execute(
            update(TemporaryCredit)
            .where(TemporaryCredit.id == pk)
            .values(ends_at=datetime.now(UTC) - timedelta(hours=1))
        )


def _pk(global_id: str) -> int:
    parsed = from_global_id(global_id)
    assert parsed is not None
    return parsed[1]


async def status_of(db: Database, credit_global_id: str) -> TemporaryCreditStatus:
    pk = _pk(credit_global_id)
    async with db.read() as session:
        row = await session.get(TemporaryCredit, pk)
        assert row is not None
        return row.status


async def test_a_revert_due_while_the_server_was_down_happens_at_start_up_once(api: Api, tmp_path: Path) -> None:
    await link(api, "U1", quotaAmount="1000.00")
    first = (await grant(api, "U1", "100.00", "first", hours=5))["temporaryCredit"]
    second = (await grant(api, "U1", "200.00", "second", hours=5))["temporaryCredit"]
    await lapse(api.db, first["id"])  # the server was down when it came

    async with server(api.db, tmp_path):
        await wait_for(lambda: _is_expired(api.db, first["id"]), "the start-up pass reverts the lapsed grant")
    assert await status_of(api.db, second["id"]) is TemporaryCreditStatus.ACTIVE
    assert (await quota(api, "U1"))["amount"] == "1200.00"

    await lapse(api.db, second["id"])
    async with server(api.db, tmp_path):  # a restart: the second one is due now, the first is done
        await wait_for(lambda: _is_expired(api.db, second["id"]), "the restart reverts the other grant")
    assert (await quota(api, "U1"))["amount"] == "1000.00"
    records, _entries = await history(api, "U1")
    reverts = [r for r in records if r["method"] == "SYSTEM"]
    assert [r["value"] for r in reverts] == ["-200.00", "-100.00"], reverts


async def _is_expired(db: Database, credit_global_id: str) -> bool:
    return await status_of(db, credit_global_id) is TemporaryCreditStatus.EXPIRED


async def test_two_workers_never_revert_twice(api: Api) -> None:
    uids = ["W1", "W2", "W3"]
    for uid in uids:
        await link(api, uid, quotaAmount="1000.00")
        for n in range(4):
            await grant(api, uid, f"{n + 1}.00", hours=1)
    at = later(hours=2)
    dbs = [Database(api.db.url), Database(api.db.url)]
    try:
        workers = [worker(db, at, batch=5) for db in dbs]  # small batches: both page through the same due list
        done = await asyncio.gather(*(w.run_once() for w in workers))
        assert sum(done) == 12, done
        assert await asyncio.gather(*(w.run_once() for w in workers)) == [0, 0]
    finally:
        for db in dbs:
            await db.dispose()
    assert await system_records(api.db) == 12
    for uid in uids:
        assert (await quota(api, uid))["amount"] == "1000.00"
    rows = await credit_rows(api.db)
    assert {row.status for row in rows} == {TemporaryCreditStatus.EXPIRED}
    assert all(row.reverted_cents == row.amount_cents for row in rows)


# ---------------------------------------------------------------- revoking


async def test_revoke_reverts_early_and_the_worker_then_does_nothing(api: Api) -> None:
    await link(api, "U1", quotaAmount="1000.00")
    credit = (await grant(api, "U1", "500.00", "trial", hours=24))["temporaryCredit"]
    partner = await partner_row(api.db)
    operator = await make_token(api.db, partner, Role.OPERATOR, method=OperationMethod.API, operator_uid="OP-9")
    payload = await revoke(api, credit["id"], token=operator)
    assert payload["userErrors"] == []
    ended = payload["temporaryCredit"]
    assert ended["status"] == "REVOKED" and ended["revertedAmount"] == "500.00"
    assert ended["endedBy"] == {"uid": "OP-9", "role": "OPERATOR"} and ended["endedAt"] is not None
    assert payload["quota"]["amount"] == "1000.00" and payload["quota"]["temporaryCredits"] == []
    records, entries = await history(api, "U1")
    assert (records[0]["value"], records[0]["method"], records[0]["operator"]) == ("-500.00", "API", {"uid": "OP-9"})
    assert "revoked" in records[0]["reason"] and "trial" in records[0]["reason"]
    assert entries[0]["method"] == "API" and entries[0]["after"]["temporaryCredit"]["status"] == "REVOKED"

    before = await full_snapshot(api)
    assert await worker(api.db, later(days=2)).run_once() == 0
    again = await revoke(api, credit["id"])
    assert [e["code"] for e in again["userErrors"]] == ["INVALID_INPUT"]
    assert await full_snapshot(api) == before


async def test_revoke_of_an_unknown_or_foreign_credit_is_not_found(api: Api) -> None:
    await link(api, "U1", quotaAmount="1000.00")
    credit = (await grant(api, "U1", "5.00"))["temporaryCredit"]
    before = await full_snapshot(api)
    for credit_id, token in (
        (credit["id"], "other"),
        (to_global_id("TemporaryCredit", 999), "admin"),
        (to_global_id("EndUser", 1), "admin"),
        ("garbage", "admin"),
    ):
        payload = await revoke(api, credit_id, as_=token)
        assert [e["code"] for e in payload["userErrors"]] == ["NOT_FOUND"], (credit_id, payload)
    assert await full_snapshot(api) == before


# ---------------------------------------------------------------- rules


async def test_bad_input_is_a_coded_error_and_changes_nothing(api: Api) -> None:
    await link(api, "M1", quotaAmount="1000.00")
    await link(api, "S1", masterUid="M1")
    await link(api, "BIG", quotaAmount="999999999000.00")
    await link(api, "FOREIGN", quotaAmount="1.00", as_="other")
    before = await full_snapshot(api)
    cases: list[tuple[dict[str, Any], str, list[str]]] = [
        ({"amount": "0"}, "INVALID_INPUT", ["input", "amount"]),
        ({"amount": "-5.00"}, "INVALID_INPUT", ["input", "amount"]),
        ({"until": iso(later(minutes=-1)), "durationHours": None}, "INVALID_INPUT", ["input", "until"]),
        ({"until": iso(later(days=367)), "durationHours": None}, "INVALID_INPUT", ["input", "until"]),
        ({"until": iso(later(days=1)), "durationHours": 5}, "INVALID_INPUT", ["input", "until"]),
        ({"durationHours": None}, "INVALID_INPUT", ["input", "until"]),
        ({"durationHours": 0}, "INVALID_INPUT", ["input", "durationHours"]),
        ({"durationHours": 366 * 24 + 1}, "INVALID_INPUT", ["input", "durationHours"]),
        ({"reason": ""}, "INVALID_INPUT", ["input", "reason"]),
        ({"reason": "   "}, "INVALID_INPUT", ["input", "reason"]),
        ({"reason": "two\nlines"}, "INVALID_INPUT", ["input", "reason"]),
        ({"reason": "bell\x07"}, "INVALID_INPUT", ["input", "reason"]),
        ({"reason": "x" * 501}, "INVALID_INPUT", ["input", "reason"]),
        ({"uid": "S1"}, "QUOTA_MANAGED_BY_MASTER", ["input", "uid"]),
        ({"uid": "NOPE"}, "NOT_FOUND", ["input", "uid"]),
        ({"uid": "FOREIGN"}, "NOT_FOUND", ["input", "uid"]),
        ({"uid": "BIG", "amount": "1000.00"}, "INVALID_INPUT", ["input", "amount"]),
    ]
    for change, code, field in cases:
        variables = {"uid": "M1", "amount": "10.00", "reason": "ok", "until": None, "durationHours": 1, **change}
        payload = (await api.gql(GRANT, {"i": variables}))["grantTemporaryCredit"]
        assert payload["temporaryCredit"] is None and payload["quota"] is None, (change, payload)
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [(code, field)], (change, payload)
    assert await full_snapshot(api) == before
    ok = await grant(api, "M1", "10.00", "x" * 500, until=later(days=366) - timedelta(minutes=1))
    assert ok["userErrors"] == []


async def test_an_inactive_account_takes_no_grant(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    await change_status(api, "U1", "TO_BE_CONFIRMED", "IN_PROCESS", "TERMINATED")
    before = await full_snapshot(api)
    assert [e["code"] for e in (await grant(api, "U1", "1.00"))["userErrors"]] == ["ACCOUNT_NOT_ACTIVE"]
    assert await full_snapshot(api) == before


async def test_only_operators_and_admins_grant_and_revoke(api: Api) -> None:
    await link(api, "U1", quotaAmount="100.00")
    credit = (await grant(api, "U1", "5.00"))["temporaryCredit"]
    partner = await partner_row(api.db)
    agency = await make_partner(api.db, "P-AGENCY", PartnerKind.AGENCY)
    agency_admin = await make_token(api.db, agency, Role.ADMIN)
    await api.gql('mutation { linkAccount(input: {uid: "A1"}) { userErrors { code } } }', token=agency_admin)
    refused = {
        "viewer": (await make_token(api.db, partner, Role.VIEWER), "U1"),
        "billing": (await make_token(api.db, partner, Role.BILLING), "U1"),
        "end user": (await make_token(api.db, partner, Role.END_USER, account_uid="U1"), "U1"),
        "agency admin": (agency_admin, "A1"),
    }
    before = await full_snapshot(api)
    for who, (token, uid) in refused.items():
        variables = {"i": {"uid": uid, "amount": "1.00", "reason": "r", "durationHours": 1}}
        body = await api.gql(GRANT, variables, token=token, errors=True)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", (who, body)
        body = await api.gql(REVOKE, {"i": {"id": credit["id"]}}, token=token, errors=True)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", (who, body)
    assert await full_snapshot(api) == before
    operator = await make_token(api.db, partner, Role.OPERATOR)
    assert (await grant(api, "U1", "1.00", token=operator))["userErrors"] == []
    # Read access follows the pool: the end user of the account sees its pool's grants.
    end_user = refused["end user"][0]
    seen = await api.gql(CREDITS, {"u": "U1"}, token=end_user)
    assert len(seen["endUser"]["quota"]["temporaryCredits"]) == 2


# ---------------------------------------------------------------- lists


async def _seed_pools_with_credits(db: Database, count: int) -> None:
    """`count` standalone accounts, each with two ACTIVE grants (rows written directly: only the reads are measured)."""
    async with db.write() as session:
        partner = await session.scalar(select(Partner).where(Partner.uid == "P-MAIN"))
        assert partner is not None
        pools = [QuotaPool(partner_id=partner.id, amount_cents=100_00, quota_created=True) for _ in range(count)]
        session.add_all(pools)
        await session.flush()
        accounts = [
            Account(partner_id=partner.id, uid=f"L{n:04d}", account_type=AccountType.ENTERPRISE, pool_id=pool.id)
            for n, pool in enumerate(pools)
        ]
        session.add_all(accounts)
        await session.flush()
        ends = datetime.now(UTC) + timedelta(days=1)
        session.add_all(
            TemporaryCredit(
                partner_id=partner.id,
                pool_id=a.pool_id,
                account_id=a.id,
                amount_cents=(k + 1) * 100,
                ends_at=ends + timedelta(hours=k),
                reason=f"r{k}",
                method=OperationMethod.API,
                operator_uid="P-MAIN",
                operator_name="P",
                operator_role=Role.ADMIN,
            )
            for a in accounts
            for k in range(2)
        )


async def test_temporary_credits_under_a_list_cost_the_same_statements_for_any_page_size(api: Api) -> None:
    await _seed_pools_with_credits(api.db, 60)
    query = (
        "query($n: Int!) { endUsers(first: $n) { edges { node { uid "
        "quota { temporaryCredits { amount reason } } } } } }"
    )
    counts = {}
    for first in (5, 50):
        await api.gql(query, {"n": first})  # warm-up
        with StatementCounter(api.db) as counter:
            data = await api.gql(query, {"n": first})
        edges = data["endUsers"]["edges"]
        assert len(edges) == first
        for edge in edges:
            assert edge["node"]["quota"]["temporaryCredits"] == [
                {"amount": "1.00", "reason": "r0"},
                {"amount": "2.00", "reason": "r1"},
            ]
        counts[first] = counter.count
    assert counts[5] == counts[50], counts

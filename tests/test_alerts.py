"""Threshold events, credit alerts and the emails they queue (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, update

from tests.support.accounts import link
from tests.support.alerts import (
    EVENTS,
    NOTIFICATIONS,
    SET_ALERT_EMAILS,
    consume,
    emails,
    events,
    pool_of,
    set_amount,
    set_credit_alert,
    set_percent,
    token,
)
from tests.support.api import Api
from uidhub.models import Account, AlertEvent, AuditEntry, CreditAlert, EmailNotification, QuotaPool
from uidhub.models.enums import AuditAction, Role
from uidhub.resolvers.pools import after_pool_change, lock_pool

# ---------------------------------------------------------------- QUOTA_WARNING


async def test_one_breach_per_crossing_and_recovery(api: Api) -> None:
    await link(api, "U1", quotaAmount="100.00", nickname="Shop")
    await set_percent(api, "U1", 20)  # level 20.00
    await consume(api, "U1", 5000)  # available 50.00
    assert await events(api) == []

    await consume(api, "U1", 3100)  # available 19.00: below
    assert await events(api) == [("QUOTA_WARNING", "BREACHED", "U1", 1900, 2000)]
    assert (await pool_of(api, "U1")).warning_below is True

    for _ in range(30):  # staying below: nothing more, not even when available goes negative
        await consume(api, "U1", 100)
    assert len(await events(api)) == 1

    await consume(api, "U1", -(3100 + 30 * 100))  # back to 50.00
    assert [e[:2] for e in await events(api)] == [("QUOTA_WARNING", "BREACHED"), ("QUOTA_WARNING", "RECOVERED")]
    await consume(api, "U1", -100)  # further up: nothing
    await consume(api, "U1", 3100)  # exactly at the level (20.00 ≥ 20.00): not below
    assert len(await events(api)) == 2
    await consume(api, "U1", 1)  # 19.99
    assert await events(api) == [
        ("QUOTA_WARNING", "BREACHED", "U1", 1900, 2000),
        ("QUOTA_WARNING", "RECOVERED", "U1", 5000, 2000),
        ("QUOTA_WARNING", "BREACHED", "U1", 1999, 2000),
    ]

    # One email per BREACHED, to the partner's alert emails; none for RECOVERED.
    mails = await emails(api)
    assert len(mails) == 2
    async with api.db.read() as session:
        breached_ids = list(
            await session.scalars(select(AlertEvent.id).where(AlertEvent.state == "BREACHED").order_by(AlertEvent.id))
        )
    assert [m.alert_event_id for m in mails] == breached_ids
    assert all(m.recipients == ["ops@example.com"] for m in mails)
    assert all(m.status.value == "PENDING" and m.attempts == 0 for m in mails)
    assert "U1 (Shop)" in mails[0].subject and "19.00" in mails[0].subject
    assert "20.00" in mails[0].body_text and "UTC+08:00" in mails[0].body_text
    assert len({m.message_id for m in mails}) == 2


async def test_amount_and_percent_changes_reevaluate_at_once(api: Api) -> None:
    await link(api, "U1", quotaAmount="100.00")
    await consume(api, "U1", 5000)  # available 50.00
    await set_percent(api, "U1", 20)  # level 20: above it
    assert await events(api) == []
    await set_percent(api, "U1", 60)  # level 60: now below
    assert await events(api) == [("QUOTA_WARNING", "BREACHED", "U1", 5000, 6000)]
    await set_percent(api, "U1", 40)  # level 40: back above
    assert (await events(api))[-1] == ("QUOTA_WARNING", "RECOVERED", "U1", 5000, 4000)

    await set_amount(api, "U1", 3000)  # amount 30, available -20, level 12
    assert (await events(api))[-1] == ("QUOTA_WARNING", "BREACHED", "U1", -2000, 1200)
    await set_amount(api, "U1", 20000)  # amount 200, available 150, level 80
    assert (await events(api))[-1] == ("QUOTA_WARNING", "RECOVERED", "U1", 15000, 8000)
    assert len(await events(api)) == 4

    # Removing the percent while below resets the side silently; setting it again breaches at once.
    await set_percent(api, "U1", 90)  # level 180 > 150
    assert (await events(api))[-1][:2] == ("QUOTA_WARNING", "BREACHED")
    await set_percent(api, "U1", None)
    assert len(await events(api)) == 5
    assert (await pool_of(api, "U1")).warning_below is False
    await consume(api, "U1", 100)  # no level: nothing
    assert len(await events(api)) == 5
    await set_percent(api, "U1", 90)
    assert (await events(api))[-1] == ("QUOTA_WARNING", "BREACHED", "U1", 14900, 18000)
    assert len(await emails(api)) == 4  # one per BREACHED


async def test_concurrent_consumptions_cross_once(api: Api) -> None:
    await link(api, "U1", quotaAmount="100.00")
    await set_percent(api, "U1", 50)
    await asyncio.gather(*(consume(api, "U1", 1000) for _ in range(10)))  # 100 → 0, crossing 50 once
    pool = await pool_of(api, "U1")
    assert pool.available_cents == 0
    assert [e[:2] for e in await events(api)] == [("QUOTA_WARNING", "BREACHED")]
    assert len(await emails(api)) == 1


async def test_partner_without_alert_emails_stores_event_without_email(api: Api) -> None:
    data = await api.gql(SET_ALERT_EMAILS, {"emails": []})
    assert data["setAlertEmails"] == {"partner": {"uid": "P-MAIN", "alertEmails": []}, "userErrors": []}
    await link(api, "U1", quotaAmount="10.00")
    await set_percent(api, "U1", 50)
    await consume(api, "U1", 600)
    assert [e[:2] for e in await events(api)] == [("QUOTA_WARNING", "BREACHED")]
    assert await emails(api) == []


async def test_sub_account_consumption_warns_on_the_owner(api: Api) -> None:
    await link(api, "M", quotaAmount="100.00")
    await link(api, "S", masterUid="M")
    await set_percent(api, "M", 10)
    await consume(api, "S", 9500)
    assert await events(api) == [("QUOTA_WARNING", "BREACHED", "M", 500, 1000)]


# ---------------------------------------------------------------- CREDIT_ALERT


async def test_credit_alert_crossings_per_account(api: Api) -> None:
    await link(api, "M", quotaAmount="100.00")
    await link(api, "S", masterUid="M")
    assert (await set_credit_alert(api, "M", "60.00", "m@example.com"))["setCreditAlert"]["userErrors"] == []
    assert (await set_credit_alert(api, "S", "30.00", "s@example.com"))["setCreditAlert"]["userErrors"] == []
    assert await events(api) == []  # both set below the available 100

    await consume(api, "S", 5000)  # 50: M below 60, S not below 30
    assert await events(api) == [("CREDIT_ALERT", "BREACHED", "M", 5000, 6000)]
    await consume(api, "M", 2500)  # 25: S below 30 now; M stays below
    assert (await events(api))[1:] == [("CREDIT_ALERT", "BREACHED", "S", 2500, 3000)]
    for _ in range(5):
        await consume(api, "S", 100)
    assert len(await events(api)) == 2
    await consume(api, "M", -5000)  # 70: both recover, in account order
    assert (await events(api))[2:] == [
        ("CREDIT_ALERT", "RECOVERED", "M", 7000, 6000),
        ("CREDIT_ALERT", "RECOVERED", "S", 7000, 3000),
    ]
    mails = await emails(api)
    assert [m.recipients for m in mails] == [["m@example.com"], ["s@example.com"]]
    assert all("Credit alert" in m.subject for m in mails)


async def test_credit_alert_set_above_available_breaches_at_once(api: Api) -> None:
    await link(api, "U1", quotaAmount="100.00")
    await consume(api, "U1", 6000)  # available 40
    data = await set_credit_alert(api, "U1", "50.00", "eu@example.com")
    assert data["setCreditAlert"]["endUser"]["creditAlert"] == {
        "enabled": True,
        "threshold": "50.00",
        "email": "eu@example.com",
    }
    assert await events(api) == [("CREDIT_ALERT", "BREACHED", "U1", 4000, 5000)]
    assert [m.recipients for m in await emails(api)] == [["eu@example.com"]]

    await set_credit_alert(api, "U1", "45.00", "eu@example.com")  # still below: nothing
    assert len(await events(api)) == 1
    await set_credit_alert(api, "U1", "30.00", "eu@example.com")  # lowered under available: RECOVERED
    assert (await events(api))[-1] == ("CREDIT_ALERT", "RECOVERED", "U1", 4000, 3000)

    # Disabled: no events at all; re-enabled while below: a new breach at once.
    await set_credit_alert(api, "U1", "30.00", "eu@example.com", enabled=False)
    await consume(api, "U1", 2000)  # 20 < 30
    assert len(await events(api)) == 2
    await set_credit_alert(api, "U1", "30.00", "eu@example.com", enabled=True)
    assert (await events(api))[-1] == ("CREDIT_ALERT", "BREACHED", "U1", 2000, 3000)
    assert len(await emails(api)) == 2

    # Audited: one CREDIT_ALERT_CHANGED per effective change.
    async with api.db.read() as session:
        audits = list(
            (
                await session.scalars(
                    select(AuditEntry)
                    .where(AuditEntry.action == AuditAction.CREDIT_ALERT_CHANGED)
                    .order_by(AuditEntry.id)
                )
            ).all()
        )
    assert len(audits) == 5
    assert audits[0].before is None
    assert audits[0].after == {"enabled": True, "threshold": "50.00", "email": "eu@example.com"}
    assert audits[1].before == {"threshold": "50.00"} and audits[1].after == {"threshold": "45.00"}


async def test_event_and_email_roll_back_with_a_failing_operation(api: Api) -> None:
    await link(api, "U1", quotaAmount="100.00")
    await set_percent(api, "U1", 50)
    await set_credit_alert(api, "U1", "40.00")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with api.db.write() as session:
            account = await session.scalar(select(Account).where(Account.uid == "U1"))
            assert account is not None
            await session.execute(
                update(QuotaPool).where(QuotaPool.id == account.pool_id).values(undeducted_cents=9000)
            )
            pool = await lock_pool(session, account.pool_id)
            await after_pool_change(session, pool, None)
            raise Boom  # a later step of the same operation fails

    assert await events(api) == []
    assert await emails(api) == []
    pool = await pool_of(api, "U1")
    assert (pool.undeducted_cents, pool.warning_below) == (0, False)
    async with api.db.read() as session:
        assert (await session.get(CreditAlert, (await _id(api, "U1")))).below is False  # type: ignore[union-attr]

    # The same change, committed: both events and both emails, linked.
    await consume(api, "U1", 9000)
    assert [e[:2] for e in await events(api)] == [("QUOTA_WARNING", "BREACHED"), ("CREDIT_ALERT", "BREACHED")]
    mails = await emails(api)
    async with api.db.read() as session:
        ids = list((await session.scalars(select(AlertEvent.id).order_by(AlertEvent.id))).all())
    assert [m.alert_event_id for m in mails] == ids


async def _id(api: Api, uid: str) -> int:
    async with api.db.read() as session:
        value = await session.scalar(select(Account.id).where(Account.uid == uid))
    assert value is not None
    return value


# ---------------------------------------------------------------- permissions and validation


async def test_set_credit_alert_permissions(api: Api) -> None:
    await link(api, "A", quotaAmount="100.00")
    await link(api, "A-SUB", masterUid="A")
    await link(api, "B", quotaAmount="100.00")
    own = await token(api, Role.END_USER, account_uid="A")

    ok = await set_credit_alert(api, "A", "10.00", "a@example.com", tok=own)
    assert ok["setCreditAlert"]["userErrors"] == []
    ok = await set_credit_alert(api, "A-SUB", "10.00", "a@example.com", tok=own)
    assert ok["setCreditAlert"]["userErrors"] == []

    other = await set_credit_alert(api, "B", "10.00", "a@example.com", tok=own)
    assert other["setCreditAlert"]["endUser"] is None
    assert [e["code"] for e in other["setCreditAlert"]["userErrors"]] == ["NOT_FOUND"]

    viewer = await token(api, Role.VIEWER)
    body = await set_credit_alert(api, "B", "10.00", "a@example.com", tok=viewer, errors=True)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    billing = await token(api, Role.BILLING)
    body = await set_credit_alert(api, "B", "10.00", "a@example.com", tok=billing, errors=True)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"

    operator = await token(api, Role.OPERATOR)
    ok = await set_credit_alert(api, "B", "10.00", "b@example.com", tok=operator)
    assert ok["setCreditAlert"]["endUser"]["creditAlert"]["email"] == "b@example.com"

    # Another partner cannot see the account at all.
    other_partner = await set_credit_alert(api, "B", "10.00", "x@example.com", as_="other")
    assert [e["code"] for e in other_partner["setCreditAlert"]["userErrors"]] == ["NOT_FOUND"]

    async with api.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(CreditAlert)) == 3


async def test_set_credit_alert_validation_changes_nothing(api: Api) -> None:
    await link(api, "A", quotaAmount="100.00")
    bad = await set_credit_alert(api, "A", "-1.00", "not-an-email")
    errors = bad["setCreditAlert"]["userErrors"]
    assert {tuple(e["field"]) for e in errors} == {("input", "email"), ("input", "threshold")}
    assert {e["code"] for e in errors} == {"INVALID_INPUT"}
    async with api.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(CreditAlert)) == 0
        audits = await session.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == AuditAction.CREDIT_ALERT_CHANGED)
        )
        assert audits == 0
    body = await set_credit_alert(api, "A", "1.234", "a@example.com", errors=True)
    assert "errors" in body  # three fraction digits are refused by the Money scalar


async def test_set_alert_emails_admin_only_and_validated(api: Api) -> None:
    data = await api.gql(SET_ALERT_EMAILS, {"emails": [" a@example.com", "b@example.com", "A@example.com"]})
    assert data["setAlertEmails"] == {
        "partner": {"uid": "P-MAIN", "alertEmails": ["a@example.com", "b@example.com"]},
        "userErrors": [],
    }
    bad = await api.gql(SET_ALERT_EMAILS, {"emails": ["ok@example.com", "nope", "x@y"]})
    assert bad["setAlertEmails"]["partner"] is None
    fields = [e["field"] for e in bad["setAlertEmails"]["userErrors"]]
    assert fields == [["input", "emails", "1"], ["input", "emails", "2"]]
    too_many = await api.gql(SET_ALERT_EMAILS, {"emails": [f"u{i}@example.com" for i in range(101)]})
    assert [e["code"] for e in too_many["setAlertEmails"]["userErrors"]] == ["INVALID_INPUT"]
    exactly = await api.gql(SET_ALERT_EMAILS, {"emails": [f"u{i}@example.com" for i in range(100)]})
    assert len(exactly["setAlertEmails"]["partner"]["alertEmails"]) == 100

    for role in (Role.OPERATOR, Role.VIEWER, Role.BILLING):
        body = await api.gql(SET_ALERT_EMAILS, {"emails": ["z@example.com"]}, token=await token(api, role), errors=True)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert body["data"] is None
    viewer = await api.gql("{ viewer { partner { alertEmails } } }")
    assert len(viewer["viewer"]["partner"]["alertEmails"]) == 100  # unchanged by the refused calls
    other = await api.gql("{ viewer { partner { alertEmails } } }", as_="other")
    assert other["viewer"]["partner"]["alertEmails"] == ["ops@example.com"]

    # The new recipients receive the next warning.
    await api.gql(SET_ALERT_EMAILS, {"emails": ["new@example.com"]})
    await link(api, "U1", quotaAmount="10.00")
    await set_percent(api, "U1", 50)
    await consume(api, "U1", 600)
    assert [m.recipients for m in await emails(api)] == [["new@example.com"]]


# ---------------------------------------------------------------- queries


async def _make_history(api: Api) -> None:
    """U1: QW BREACHED, RECOVERED, BREACHED; U2: CA BREACHED; OTHER partner: QW BREACHED."""
    await link(api, "U1", quotaAmount="100.00")
    await link(api, "U2", quotaAmount="100.00")
    await link(api, "X1", quotaAmount="100.00", as_="other")
    await set_percent(api, "U1", 50)
    await consume(api, "U1", 6000)
    await consume(api, "U1", -2000)
    await consume(api, "U1", 2000)
    await set_credit_alert(api, "U2", "200.00", "u2@example.com")
    await set_percent(api, "X1", 50)
    await consume(api, "X1", 9000)


async def test_alert_events_query_filters_pagination_and_scoping(api: Api) -> None:
    await _make_history(api)
    data = (await api.gql(EVENTS, {}))["alertEvents"]
    assert data["totalCount"] == 4
    nodes = [e["node"] for e in data["edges"]]
    assert [(n["kind"], n["state"], n["account"]["uid"]) for n in nodes] == [
        ("CREDIT_ALERT", "BREACHED", "U2"),
        ("QUOTA_WARNING", "BREACHED", "U1"),
        ("QUOTA_WARNING", "RECOVERED", "U1"),
        ("QUOTA_WARNING", "BREACHED", "U1"),
    ]
    assert nodes[0]["available"] == "100.00" and nodes[0]["threshold"] == "200.00"
    assert nodes[3]["available"] == "40.00" and nodes[3]["threshold"] == "50.00"

    # Pages of two, keyset by id, newest first, no overlap and nothing missed.
    seen: list[str] = []
    after = None
    for expected_next in (True, False):
        page = (await api.gql(EVENTS, {"first": 2, "after": after}))["alertEvents"]
        assert page["pageInfo"]["hasNextPage"] is expected_next
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        assert page["totalCount"] == 4
        seen += [e["node"]["id"] for e in page["edges"]]
        after = page["pageInfo"]["endCursor"]
    assert seen == [n["id"] for n in nodes]

    filtered = (await api.gql(EVENTS, {"uid": "U1", "states": ["BREACHED"]}))["alertEvents"]
    assert filtered["totalCount"] == 2
    assert {e["node"]["state"] for e in filtered["edges"]} == {"BREACHED"}
    kinds = (await api.gql(EVENTS, {"kinds": ["CREDIT_ALERT"]}))["alertEvents"]
    assert [e["node"]["account"]["uid"] for e in kinds["edges"]] == ["U2"]
    both = await api.gql(EVENTS, {"kinds": ["CREDIT_ALERT", "QUOTA_WARNING"], "states": ["RECOVERED"]})
    assert both["alertEvents"]["totalCount"] == 1

    # Another partner sees only its own; a UID of ours is nothing to it.
    other = (await api.gql(EVENTS, {}, as_="other"))["alertEvents"]
    assert [e["node"]["account"]["uid"] for e in other["edges"]] == ["X1"]
    assert (await api.gql(EVENTS, {"uid": "U1"}, as_="other"))["alertEvents"] == {
        "totalCount": 0,
        "pageInfo": {"hasNextPage": False, "hasPreviousPage": False, "startCursor": None, "endCursor": None},
        "edges": [],
    }

    # An END_USER token sees its own account's events only.
    eu = await token(api, Role.END_USER, account_uid="U2")
    mine = (await api.gql(EVENTS, {}, token=eu))["alertEvents"]
    assert mine["totalCount"] == 1 and mine["edges"][0]["node"]["account"]["uid"] == "U2"

    # node(id:) follows the same scoping.
    query = "query($id: ID!) { node(id: $id) { id ... on QuotaAlertEvent { kind state } } }"
    assert (await api.gql(query, {"id": nodes[1]["id"]}))["node"]["state"] == "BREACHED"
    assert (await api.gql(query, {"id": nodes[1]["id"]}, as_="other"))["node"] is None
    assert (await api.gql(query, {"id": nodes[1]["id"]}, token=eu))["node"] is None

    # A bad cursor is a GraphQL error, not a crash.
    body = await api.gql(EVENTS, {"after": "garbage"}, errors=True)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_notifications_query(api: Api) -> None:
    await _make_history(api)
    data = (await api.gql(NOTIFICATIONS, {}))["notifications"]
    assert data["totalCount"] == 3  # two QW breaches of U1 and the CA breach of U2
    first = data["edges"][0]["node"]
    assert first["to"] == ["u2@example.com"] and first["status"] == "PENDING" and first["attempts"] == 0
    assert first["alertEvent"]["kind"] == "CREDIT_ALERT" and first["alertEvent"]["account"]["uid"] == "U2"
    assert first["sentAt"] is None and first["lastError"] is None
    assert [e["node"]["to"] for e in data["edges"][1:]] == [["ops@example.com"], ["ops@example.com"]]

    async with api.db.write() as session:
        await session.execute(update(EmailNotification).where(EmailNotification.id == 1).values(status="FAILED"))
    failed = (await api.gql(NOTIFICATIONS, {"status": "FAILED"}))["notifications"]
    pending = (await api.gql(NOTIFICATIONS, {"status": "PENDING"}))["notifications"]
    assert failed["totalCount"] + pending["totalCount"] == 3 and failed["totalCount"] == 1

    page = (await api.gql(NOTIFICATIONS, {"first": 2}))["notifications"]
    rest = (await api.gql(NOTIFICATIONS, {"first": 2, "after": page["pageInfo"]["endCursor"]}))["notifications"]
    assert page["pageInfo"]["hasNextPage"] and not rest["pageInfo"]["hasNextPage"]
    ids = [e["node"]["id"] for e in page["edges"] + rest["edges"]]
    assert ids == [e["node"]["id"] for e in data["edges"]]

    other = (await api.gql(NOTIFICATIONS, {}, as_="other"))["notifications"]
    assert other["totalCount"] == 1 and other["edges"][0]["node"]["alertEvent"]["account"]["uid"] == "X1"

    # END_USER: its own credit alert emails only, never the partner's quota warnings.
    eu1 = await token(api, Role.END_USER, account_uid="U1")
    assert (await api.gql(NOTIFICATIONS, {}, token=eu1))["notifications"]["totalCount"] == 0
    eu2 = await token(api, Role.END_USER, account_uid="U2")
    mine = (await api.gql(NOTIFICATIONS, {}, token=eu2))["notifications"]
    assert [e["node"]["to"] for e in mine["edges"]] == [["u2@example.com"]]

    query = "query($id: ID!) { node(id: $id) { ... on EmailNotification { subject } } }"
    assert (await api.gql(query, {"id": first["id"]}, token=eu2))["node"]["subject"]
    assert (await api.gql(query, {"id": data["edges"][1]["node"]["id"]}, token=eu2))["node"] is None
    assert (await api.gql(query, {"id": first["id"]}, as_="other"))["node"] is None

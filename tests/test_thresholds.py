"""Alert thresholds per pool: kinds, severities, the forecast kind, automatic actions (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path

from tests.support.accounts import link
from tests.support.alerts import emails, token
from tests.support.api import Api, make_partner, make_token
from tests.support.db import StatementCounter
from tests.support.live import BREACHES, WsClient, latest_ids, serve_in_loop
from tests.support.ops import smtp_server
from tests.support.policy import purchase_control
from tests.support.thresholds import (
    DECIDE,
    EVENTS,
    PENDING,
    POLICY,
    REMOVE,
    UPDATE,
    add,
    audit_rows,
    backdated_spend,
    consume,
    event_rows,
    threshold_count,
    unconsume,
)
from uidhub.app import create_app
from uidhub.models.enums import PartnerKind, Role
from uidhub.notifications.outbox import OutboxSender
from uidhub.resolvers.thresholds import evaluate_forecasts
from uidhub.settings import Settings


async def _events(api: Api) -> list[dict[str, object]]:
    """alertEvents through the API, oldest first."""
    edges = (await api.gql(EVENTS))["alertEvents"]["edges"]
    return [e["node"] for e in reversed(edges)]


# ---------------------------------------------------------------- crossings


async def test_two_thresholds_crossed_by_one_consumption_fire_two_events_and_two_emails_once(api: Api) -> None:
    await link(api, "T1", quotaAmount="100.00", nickname="Shop")
    half = await add(api, "T1", kind="PERCENT_OF_QUOTA", value=50, severity="CRITICAL", recipients=["crit@example.com"])
    floor = await add(api, "T1", kind="AVAILABLE_BELOW", amount="60.00", severity="INFO")
    assert await consume(api, "T1", "30.00") == "70.00"
    assert await _events(api) == []

    assert await consume(api, "T1", "30.00") == "40.00"  # crosses 60.00 and 50 % (50.00) at once
    got = await _events(api)
    assert [(e["state"], e["thresholdId"], e["severity"], e["thresholdKind"], e["threshold"]) for e in got] == [
        ("BREACHED", half["id"], "CRITICAL", "PERCENT_OF_QUOTA", "50.00"),
        ("BREACHED", floor["id"], "INFO", "AVAILABLE_BELOW", "60.00"),
    ]
    assert all(e["kind"] == "QUOTA_WARNING" and e["account"] == {"uid": "T1"} for e in got)

    await consume(api, "T1", "10.00")  # further down: both stay breached, nothing new
    assert len(await _events(api)) == 2
    mails = await emails(api)
    assert [(m.recipients, m.subject.split(" ")[0]) for m in mails] == [
        (["crit@example.com"], "[CRITICAL]"),
        (["ops@example.com"], "[INFO]"),  # no recipients of its own: the partner's alert emails
    ]
    assert "Severity" in mails[0].body_text and "CRITICAL" in mails[0].body_html

    # The outbox delivers each of them once to a real SMTP server.
    with smtp_server() as smtp:
        settings = Settings(database_url=api.db.url, smtp_host="127.0.0.1", smtp_port=smtp.port)
        sender = OutboxSender(api.db, settings)
        assert await sender.run_once() == 2
        assert await sender.run_once() == 0
        subjects = sorted(
            str(make_header(decode_header(message_from_bytes(e.content)["Subject"]))) for e in smtp.received
        )
    assert len(subjects) == 2
    assert subjects[0].startswith("[CRITICAL]") and subjects[1].startswith("[INFO]")


async def test_recovery_rearms_each_threshold_on_its_own(api: Api) -> None:
    await link(api, "T1", quotaAmount="100.00")
    half = await add(api, "T1", kind="PERCENT_OF_QUOTA", value=50)
    low = await add(api, "T1", kind="AVAILABLE_BELOW", amount="20.00", severity="CRITICAL")
    await consume(api, "T1", "85.00")  # 15.00: both breached
    await unconsume(api, "T1", 1_000)  # 25.00: the 20.00 one recovers, 50 % stays breached
    await unconsume(api, "T1", 100)  # 26.00: nothing
    await consume(api, "T1", "6.00")  # 20.00: at the level is not below
    await consume(api, "T1", "0.01")  # 19.99: breached again
    got = [(e["state"], e["thresholdId"]) for e in await _events(api)]
    assert got == [
        ("BREACHED", half["id"]),
        ("BREACHED", low["id"]),
        ("RECOVERED", low["id"]),
        ("BREACHED", low["id"]),
    ]
    assert len(await emails(api)) == 3  # BREACHED only


async def test_warning_threshold_is_the_first_percent_threshold(api: Api) -> None:
    await link(api, "T1", quotaAmount="100.00")
    data = await api.gql(
        'mutation { setWarningThreshold(input: {uid: "T1", percent: 30}) { quota { '
        "warningThresholdPercent thresholds { id kind value severity } } userErrors { code } } }"
    )
    quota = data["setWarningThreshold"]["quota"]
    assert quota["warningThresholdPercent"] == 30
    assert [(t["kind"], t["value"], t["severity"]) for t in quota["thresholds"]] == [
        ("PERCENT_OF_QUOTA", 30, "WARNING")
    ]
    warning_id = quota["thresholds"][0]["id"]
    await consume(api, "T1", "75.00")
    got = await _events(api)
    assert [(e["state"], e["thresholdId"], e["severity"], e["threshold"]) for e in got] == [
        ("BREACHED", warning_id, "WARNING", "30.00")
    ]
    # Changing it through the threshold API moves warningThresholdPercent with it.
    data = await api.gql(UPDATE, {"input": {"id": warning_id, "threshold": {"kind": "PERCENT_OF_QUOTA", "value": 20}}})
    assert data["updateQuotaThreshold"]["userErrors"] == []
    quota = await api.gql('{ endUser(uid: "T1") { quota { warningThresholdPercent belowWarningLevel } } }')
    assert quota["endUser"]["quota"] == {"warningThresholdPercent": 20, "belowWarningLevel": False}
    assert [e["state"] for e in await _events(api)] == ["BREACHED", "RECOVERED"]
    data = await api.gql(
        'mutation { setWarningThreshold(input: {uid: "T1", percent: null}) '
        "{ quota { warningThresholdPercent thresholds { id } } userErrors { code } } }"
    )
    assert data["setWarningThreshold"]["quota"] == {"warningThresholdPercent": None, "thresholds": []}


async def test_update_and_remove_are_audited_and_remove_is_silent(api: Api) -> None:
    await link(api, "T1", quotaAmount="100.00")
    t = await add(api, "T1", kind="AVAILABLE_BELOW", amount="50.00")
    await consume(api, "T1", "60.00")
    data = await api.gql(
        UPDATE,
        {
            "input": {
                "id": t["id"],
                "threshold": {
                    "kind": "AVAILABLE_BELOW",
                    "amount": "45.00",
                    "severity": "CRITICAL",
                    "recipients": ["a@example.com"],
                },
            }
        },
    )
    assert data["updateQuotaThreshold"]["userErrors"] == []
    changed = data["updateQuotaThreshold"]["quota"]["thresholds"][0]
    assert (changed["amount"], changed["severity"], changed["recipients"], changed["breached"]) == (
        "45.00",
        "CRITICAL",
        ["a@example.com"],
        True,
    )
    data = await api.gql(REMOVE, {"id": t["id"]})
    assert data["removeQuotaThreshold"]["quota"]["thresholds"] == []
    assert [e["state"] for e in await _events(api)] == ["BREACHED"]  # removal stores no RECOVERED
    assert [a[:3] for a in await audit_rows(api, "THRESHOLD_ADDED", "THRESHOLD_CHANGED", "THRESHOLD_REMOVED")] == [
        ("THRESHOLD_ADDED", "T1", "PLATFORM"),
        ("THRESHOLD_CHANGED", "T1", "PLATFORM"),
        ("THRESHOLD_REMOVED", "T1", "PLATFORM"),
    ]


# ---------------------------------------------------------------- RUNS_OUT_WITHIN_DAYS


async def test_runs_out_within_days_fires_from_a_consumption(api: Api) -> None:
    await link(api, "T1", quotaAmount="1000.00")
    await backdated_spend(api, "T1", 7_000, timedelta(days=3))  # 70.00 a week: 10.00 a day; 930.00 left: 93 days
    t = await add(api, "T1", kind="RUNS_OUT_WITHIN_DAYS", value=30, severity="CRITICAL")
    assert t["breached"] is False
    await consume(api, "T1", "700.00")  # 230.00 left at 110.00 a day: 2 days
    got = await _events(api)
    assert [(e["state"], e["thresholdId"], e["thresholdKind"], e["daysLeft"]) for e in got] == [
        ("BREACHED", t["id"], "RUNS_OUT_WITHIN_DAYS", 2)
    ]
    assert got[0]["threshold"] == "3300.00"  # what lasts 30 days at 110.00 a day
    await consume(api, "T1", "1.00")
    assert len(await _events(api)) == 1
    assert "forecast 2 days left" in (await emails(api))[0].body_text


async def test_runs_out_within_days_fires_from_the_periodic_pass_once_across_workers(api: Api) -> None:
    await link(api, "T1", quotaAmount="100.00")
    t = await add(api, "T1", kind="RUNS_OUT_WITHIN_DAYS", value=5)
    # Spend no evaluation has looked at: 70.00 six days ago, 30.00 left at 10.00 a day = 3 days.
    await backdated_spend(api, "T1", 7_000, timedelta(days=6))
    assert await _events(api) == []
    # Two workers run the pass at once: the crossing is stored once.
    stored = await asyncio.gather(evaluate_forecasts(api.db), evaluate_forecasts(api.db))
    assert sorted(stored) == [0, 1]
    assert [(e["state"], e["thresholdId"], e["daysLeft"]) for e in await _events(api)] == [("BREACHED", t["id"], 3)]
    assert await evaluate_forecasts(api.db) == 0
    # Time alone moves the forecast: two days later the spend has left the 7-day window, no forecast, recovered.
    later = datetime.now(UTC) + timedelta(days=2)
    assert await evaluate_forecasts(api.db, now=later) == 1
    assert [e["state"] for e in await _events(api)] == ["BREACHED", "RECOVERED"]
    assert await evaluate_forecasts(api.db, now=later) == 0


# ---------------------------------------------------------------- automatic actions


async def test_action_without_approval_is_applied_by_the_system_with_its_cascade(api: Api) -> None:
    await link(api, "M1", quotaAmount="100.00")
    await link(api, "S1", masterUid="M1")
    await add(api, "M1", kind="AVAILABLE_BELOW", amount="50.00", action="BAN_PURCHASES")
    await consume(api, "S1", "40.00")
    assert (await api.gql(POLICY, {"uid": "M1"}))["endUser"]["policy"]["purchaseControl"] == "NORMAL"
    await consume(api, "S1", "20.00")  # the sub spends the master's pool below 50.00
    master = (await api.gql(POLICY, {"uid": "M1"}))["endUser"]["policy"]
    sub = (await api.gql(POLICY, {"uid": "S1"}))["endUser"]["policy"]
    assert (master["purchaseControl"], sub["purchaseControl"], sub["effectivePurchaseControl"]) == (
        "BANNED",
        "NORMAL",
        "BANNED",
    )
    rows = await audit_rows(api, "PURCHASE_CONTROL_CHANGED")
    assert [(a, uid, method) for a, uid, method, _ in rows] == [
        ("PURCHASE_CONTROL_CHANGED", "M1", "SYSTEM"),
        ("PURCHASE_CONTROL_CHANGED", "S1", "SYSTEM"),
    ]
    assert rows[0][3] is None and rows[1][3] is not None  # the sub's entry cascades from the master


async def test_an_operators_unban_is_respected_until_the_next_crossing(api: Api) -> None:
    await link(api, "M1", quotaAmount="100.00")
    await add(api, "M1", kind="AVAILABLE_BELOW", amount="50.00", action="BAN_PURCHASES")
    await consume(api, "M1", "60.00")
    assert (await api.gql(POLICY, {"uid": "M1"}))["endUser"]["policy"]["purchaseControl"] == "BANNED"
    assert (await purchase_control(api, "M1", "NORMAL"))["userErrors"] == []
    await consume(api, "M1", "5.00")  # still below: no crossing, the unban stands
    assert (await api.gql(POLICY, {"uid": "M1"}))["endUser"]["policy"]["purchaseControl"] == "NORMAL"
    await unconsume(api, "M1", 3_000)  # 65.00: recovered
    await consume(api, "M1", "20.00")  # 45.00: breached again, banned again
    assert (await api.gql(POLICY, {"uid": "M1"}))["endUser"]["policy"]["purchaseControl"] == "BANNED"


async def test_action_with_approval_waits_for_an_operator_and_dismiss_discards_it(api: Api) -> None:
    await link(api, "M1", quotaAmount="100.00")
    await link(api, "S1", masterUid="M1")
    t = await add(
        api, "M1", kind="PERCENT_OF_QUOTA", value=50, severity="CRITICAL", action="FREEZE_PAYG", requiresApproval=True
    )
    await consume(api, "M1", "60.00")
    policy = (await api.gql(POLICY, {"uid": "S1"}))["endUser"]["policy"]
    assert policy["effectivePaygFreezeStatus"] == "NORMAL"  # not applied yet
    pending = (await api.gql(PENDING))["pendingActions"]
    assert pending["totalCount"] == 1
    node = pending["edges"][0]["node"]
    assert (node["action"], node["status"], node["severity"], node["thresholdId"], node["account"]) == (
        "FREEZE_PAYG",
        "PENDING",
        "CRITICAL",
        t["id"],
        {"uid": "M1"},
    )
    assert [a[:3] for a in await audit_rows(api, "PENDING_ACTION_CREATED")] == [
        ("PENDING_ACTION_CREATED", "M1", "SYSTEM")
    ]

    viewer = await token(api, Role.VIEWER)
    body = await api.gql(DECIDE % "approvePendingAction", {"id": node["id"]}, token=viewer, errors=True)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"

    data = await api.gql(DECIDE % "approvePendingAction", {"id": node["id"]})
    assert data["approvePendingAction"]["pendingAction"]["status"] == "APPROVED"
    assert data["approvePendingAction"]["pendingAction"]["decidedBy"] is not None
    policy = (await api.gql(POLICY, {"uid": "S1"}))["endUser"]["policy"]
    assert (policy["paygFreezeStatus"], policy["effectivePaygFreezeStatus"]) == ("NORMAL", "FROZEN")
    frozen = await audit_rows(api, "PAYG_FROZEN", "PENDING_ACTION_APPROVED")
    assert [a[:3] for a in frozen] == [
        ("PAYG_FROZEN", "M1", "PLATFORM"),
        ("PAYG_FROZEN", "S1", "PLATFORM"),
        ("PENDING_ACTION_APPROVED", "M1", "PLATFORM"),
    ]
    again = await api.gql(DECIDE % "dismissPendingAction", {"id": node["id"]})
    assert again["dismissPendingAction"]["userErrors"][0]["code"] == "INVALID_INPUT"

    # Unfreeze, recover, breach again: a new pending action; dismissed, nothing is applied.
    data = await api.gql('mutation { unfreezePayg(input: {uids: ["M1"], confirm: true}) { applied } }')
    assert data["unfreezePayg"]["applied"] is True
    await unconsume(api, "M1", 3_000)
    await consume(api, "M1", "30.00")
    node = (await api.gql(PENDING))["pendingActions"]["edges"][0]["node"]
    data = await api.gql(DECIDE % "dismissPendingAction", {"id": node["id"]})
    assert data["dismissPendingAction"]["pendingAction"]["status"] == "DISMISSED"
    policy = (await api.gql(POLICY, {"uid": "M1"}))["endUser"]["policy"]
    assert policy["paygFreezeStatus"] == "NORMAL"
    assert (await api.gql(PENDING))["pendingActions"]["totalCount"] == 0
    assert (await api.gql(PENDING, {"status": None}))["pendingActions"]["totalCount"] == 2
    assert len(await audit_rows(api, "PENDING_ACTION_DISMISSED")) == 1


# ---------------------------------------------------------------- limits and permissions


async def test_limits_give_coded_errors_and_change_nothing(api: Api) -> None:
    await link(api, "T1", quotaAmount="100.00")
    bad = [
        ({"kind": "PERCENT_OF_QUOTA", "value": 0}, "INVALID_INPUT"),
        ({"kind": "PERCENT_OF_QUOTA", "value": 101}, "INVALID_INPUT"),
        ({"kind": "RUNS_OUT_WITHIN_DAYS", "value": 366}, "INVALID_INPUT"),
        ({"kind": "AVAILABLE_BELOW"}, "INVALID_INPUT"),
        ({"kind": "AVAILABLE_BELOW", "amount": "1.00", "value": 3}, "INVALID_INPUT"),
        ({"kind": "PERCENT_OF_QUOTA", "value": 10, "requiresApproval": True}, "INVALID_INPUT"),
        ({"kind": "PERCENT_OF_QUOTA", "value": 10, "recipients": ["not an address"]}, "INVALID_INPUT"),
    ]
    for fields, code in bad:
        data = await add(api, "T1", errors=True, **fields)
        assert data["data"]["addQuotaThreshold"]["userErrors"][0]["code"] == code, fields
    assert await threshold_count(api) == 0
    for percent in range(1, 11):
        await add(api, "T1", kind="PERCENT_OF_QUOTA", value=percent)
    data = await add(api, "T1", errors=True, kind="AVAILABLE_BELOW", amount="1.00")
    assert data["data"]["addQuotaThreshold"]["userErrors"][0]["code"] == "TOO_MANY_THRESHOLDS"
    assert await threshold_count(api) == 10
    assert len(await audit_rows(api, "THRESHOLD_ADDED")) == 10


async def test_permissions(api: Api) -> None:
    await link(api, "M1", quotaAmount="100.00")
    await link(api, "S1", masterUid="M1")
    data = await add(api, "S1", errors=True, kind="PERCENT_OF_QUOTA", value=10)
    assert data["data"]["addQuotaThreshold"]["userErrors"][0]["code"] == "QUOTA_MANAGED_BY_MASTER"
    t = await add(api, "M1", kind="PERCENT_OF_QUOTA", value=10)
    for role in (Role.VIEWER, Role.BILLING):
        body = await add(api, "M1", errors=True, token=await token(api, role), kind="PERCENT_OF_QUOTA", value=20)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    end_user = await token(api, Role.END_USER, account_uid="M1")
    body = await api.gql(REMOVE, {"id": t["id"]}, token=end_user, errors=True)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # An end user sees its pool's thresholds, but not the partner's people's addresses.
    await add(api, "M1", kind="AVAILABLE_BELOW", amount="1.00", recipients=["boss@partner.example"])
    seen = await api.gql('{ endUser(uid: "M1") { quota { thresholds { kind recipients } } } }', token=end_user)
    assert seen["endUser"]["quota"]["thresholds"] == [
        {"kind": "PERCENT_OF_QUOTA", "recipients": None},
        {"kind": "AVAILABLE_BELOW", "recipients": None},
    ]
    agency = await make_partner(api.db, "P-AGENCY", PartnerKind.AGENCY)
    agency_token = await make_token(api.db, agency, Role.ADMIN)
    assert (await api.gql('mutation { linkAccount(input: {uid: "A1"}) { userErrors { code } } }', token=agency_token))[
        "linkAccount"
    ]["userErrors"] == []
    body = await add(api, "A1", errors=True, token=agency_token, kind="PERCENT_OF_QUOTA", value=20)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # Another partner's threshold does not exist for you.
    data = await api.gql(REMOVE, {"id": t["id"]}, as_="other")
    assert data["removeQuotaThreshold"]["userErrors"][0]["code"] == "NOT_FOUND"
    assert (await api.gql(PENDING, as_="other"))["pendingActions"]["totalCount"] == 0
    assert await threshold_count(api) == 2


async def test_thresholds_of_a_list_cost_one_query(api: Api) -> None:
    query = "{ endUsers(first: 50) { edges { node { uid quota { thresholds { id kind value severity } } } } } }"
    counts = []
    for n in (2, 6):
        for i in range(n):
            uid = f"T{n}-{i}"
            await link(api, uid, quotaAmount="100.00")
            await add(api, uid, kind="PERCENT_OF_QUOTA", value=10 + i)
            await add(api, uid, kind="AVAILABLE_BELOW", amount="5.00")
        with StatementCounter(api.db) as counter:
            data = await api.gql(query)
        nodes = [e["node"] for e in data["endUsers"]["edges"]]
        assert all(len(node["quota"]["thresholds"]) == 2 for node in nodes)
        assert len(nodes) == (2 if n == 2 else 8)
        counts.append(counter.count)
        threshold_queries = [s for s in counter.statements if "quota_thresholds" in s]
        assert len(threshold_queries) == 1, threshold_queries
    assert counts[0] == counts[1], counts


async def test_the_subscription_payload_carries_threshold_and_severity(api: Api, tmp_path: Path) -> None:
    settings = Settings(database_url=api.db.url, export_dir=str(tmp_path / "exports"), resync_seconds=1.0)
    app = create_app(settings, db=api.db)
    admin = api.tokens["admin"]
    await link(api, "T1", quotaAmount="100.00")
    t = await add(api, "T1", kind="AVAILABLE_BELOW", amount="50.00", severity="CRITICAL")
    query = BREACHES.replace("occurredAt", "occurredAt thresholdId severity thresholdKind")
    async with serve_in_loop(app) as (address, _server):
        client = await WsClient.open(address, admin)
        after = (await latest_ids(address, admin))["alerts"]
        await client.subscribe("b", query, {"afterId": after})
        await consume(api, "T1", "60.00")
        event = (await client.next_data())["quotaThresholdBreached"]
        await client.close()
    assert (event["thresholdId"], event["severity"], event["thresholdKind"]) == (t["id"], "CRITICAL", "AVAILABLE_BELOW")
    assert len(await event_rows(api)) == 1


async def test_the_upgrade_gives_each_warning_percent_its_threshold_row(tmp_path: Path) -> None:
    """A pool with a warning percent (and its side) before 0003_alerts keeps it, as its first threshold."""
    from alembic import command
    from sqlalchemy import text

    from uidhub.db import Database
    from uidhub.migrate import alembic_config

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0002_tenancy")
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO partners (id, uid, name, kind, alert_emails, created_at) "
                    "VALUES (1, 'P', 'P', 'DISTRIBUTOR', '[]', '2026-01-01 00:00:00')"
                )
            )
            for pool_id, percent, below in ((1, 30, True), (2, None, False)):
                await conn.execute(
                    text(
                        "INSERT INTO quota_pools (id, partner_id, amount_cents, deducted_cents, undeducted_cents, "
                        "quota_created, warning_percent, warning_below, shutdown_policy, delay_credit_cents, "
                        "credit_control_status, updated_at) VALUES (:id, 1, 100, 0, 0, 1, :p, :b, 'IMMEDIATE_STOP', 0, "
                        "'NORMAL', '2026-01-01 00:00:00')"
                    ),
                    {"id": pool_id, "p": percent, "b": below},
                )
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
        async with db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT pool_id, kind, value, severity, below, requires_approval FROM quota_thresholds")
                )
            ).all()
        assert [tuple(r) for r in rows] == [(1, "PERCENT_OF_QUOTA", 30, "WARNING", 1, 0)]
    finally:
        await db.dispose()


async def test_a_crossing_is_stored_once_even_by_evaluations_without_the_pool_lock(api: Api) -> None:
    """The guarded side update (WHERE below = old) alone keeps two concurrent evaluations to one event."""
    from sqlalchemy import select

    from uidhub.models import Account, QuotaPool
    from uidhub.resolvers.crossing import evaluate_pool

    await link(api, "T1", quotaAmount="100.00")
    await add(api, "T1", kind="RUNS_OUT_WITHIN_DAYS", value=5)
    await backdated_spend(api, "T1", 7_000, timedelta(days=6))  # 3 days left, not yet evaluated

    async def evaluate_unlocked() -> int:
        async with api.db.write() as session:
            account = await session.scalar(select(Account).where(Account.uid == "T1"))
            assert account is not None
            pool = await session.get(QuotaPool, account.pool_id)  # read, not locked
            assert pool is not None
            return len(await evaluate_pool(session, pool))

    stored = await asyncio.gather(evaluate_unlocked(), evaluate_unlocked())
    assert sorted(stored) == [0, 1]
    assert [e.state.value for e in await event_rows(api)] == ["BREACHED"]

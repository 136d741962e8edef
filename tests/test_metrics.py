"""GET /metrics (UIDHUB_METRICS=true): the scrape parses, and its counters move with what the server does.

Counters are process-wide, so every test compares a scrape after the action
with one before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text, update

from tests.support.api import Api, make_api, make_partner, make_token
from tests.support.exports import drain, start_ok
from tests.support.live import BREACHES, WsClient, serve_in_loop
from tests.support.ops import Scrape, breach, scrape, smtp_server
from uidhub import metrics
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.models import EmailNotification
from uidhub.models.enums import Role
from uidhub.notifications.outbox import OutboxSender
from uidhub.settings import Settings


@pytest.fixture
async def mapi(db: Database, tmp_path: Path) -> AsyncIterator[Api]:
    """The in-process app with metrics on (both databases)."""
    async for value in make_api(db, tmp_path, metrics=True):
        yield value


async def test_metrics_are_off_unless_switched_on(api: Api) -> None:
    response = await api.client.get("/metrics")
    assert response.status_code == 404


async def test_graphql_requests_durations_and_error_codes_are_counted(mapi: Api) -> None:
    before = await scrape(mapi)
    compiled = mapi.client._transport.app.state.compiled_reads  # type: ignore[attr-defined]
    answered = compiled.compiled
    await mapi.gql("query ListPage { endUsers(first: 3) { totalCount } }")
    await mapi.gql("query ListPage { endUsers(first: 3) { totalCount } }")
    assert compiled.compiled == answered + 2  # the compiled read path counts its requests like strawberry's
    await mapi.gql("{ viewer { method } }")
    await mapi.gql('mutation Link { linkAccount(input: {uid: "1999000000000001"}) { userErrors { code } } }')
    bad = await mapi.gql("query Bad { endUsers(first: 1000) { totalCount } }", errors=True)
    unauthenticated = await mapi.client.post("/graphql", json={"query": "{ viewer { method } }"})
    assert unauthenticated.status_code == 401
    after = await scrape(mapi)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("uidhub_graphql_requests_total", type="query", operation="ListPage") == 2
    assert delta("uidhub_graphql_requests_total", type="query", operation="anonymous") == 1
    assert delta("uidhub_graphql_requests_total", type="mutation", operation="Link") == 1
    assert delta("uidhub_graphql_request_duration_seconds_count", type="query", operation="ListPage") == 2
    assert delta("uidhub_graphql_request_duration_seconds_sum", type="query", operation="ListPage") > 0
    codes = {e.get("extensions", {}).get("code") for e in bad["errors"]}
    assert len(bad["errors"]) == 1
    code = codes.pop() or "OTHER"
    assert delta("uidhub_graphql_errors_total", code=code) == 1
    assert delta("uidhub_http_responses_total", route="/graphql", status="401") == 1
    assert delta("uidhub_http_responses_total", route="/graphql", status="200") >= 5
    # The database snapshot is part of every scrape.
    assert after.value("uidhub_database_up") == 1
    assert {"uidhub_db_pool_connections", "uidhub_emails", "uidhub_export_tasks"} <= after.names()


async def test_operation_names_are_a_bounded_label_set(sqlite_db: Database, tmp_path: Path) -> None:
    async for mapi in make_api(sqlite_db, tmp_path, metrics=True):
        m = metrics.current()
        assert m is not None
        for n in range(metrics.MAX_OPERATION_NAMES + 5):
            await mapi.gql(f"query Name{n} {{ viewer {{ method }} }}")
        after = await scrape(mapi)
    names = {labels["operation"] for name, labels, _v in after.samples if name == "uidhub_graphql_requests_total"}
    assert len(names) <= metrics.MAX_OPERATION_NAMES + 2  # + "anonymous" and "other"
    assert after.value("uidhub_graphql_requests_total", operation="other") > 0


async def test_email_attempts_failures_statuses_and_oldest_pending_age(mapi: Api) -> None:
    await breach(mapi, "1999000000000001")
    before = await scrape(mapi)
    assert before.value("uidhub_emails", status="PENDING") == 1
    assert before.value("uidhub_email_oldest_pending_age_seconds") >= 0
    with smtp_server(fail_first=1) as smtp:
        settings = Settings(
            database_url=mapi.db.url,
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            smtp_backoff_seconds=60,
            smtp_timeout_seconds=5,
        )
        sender = OutboxSender(mapi.db, settings)
        assert await sender.run_once() == 1  # answered 451: an attempt and a failure, still PENDING
        failed = await scrape(mapi)
        async with mapi.db.write() as session:
            await session.execute(update(EmailNotification).values(next_attempt_at=datetime.now(UTC)))
        assert await sender.run_once() == 1
        assert len(smtp.received) == 1
    after = await scrape(mapi)
    assert failed.value("uidhub_email_send_attempts_total") - before.value("uidhub_email_send_attempts_total") == 1
    assert (
        failed.value("uidhub_email_send_failures_total", final="false")
        - before.value("uidhub_email_send_failures_total", final="false")
        == 1
    )
    assert failed.value("uidhub_emails", status="PENDING") == 1
    assert after.value("uidhub_email_send_attempts_total") - before.value("uidhub_email_send_attempts_total") == 2
    assert after.value("uidhub_emails_sent_total") - before.value("uidhub_emails_sent_total") == 1
    assert after.value("uidhub_emails", status="PENDING") == 0
    assert after.value("uidhub_emails", status="SENT") == 1
    assert after.value("uidhub_email_oldest_pending_age_seconds") == 0


async def test_export_tasks_by_status_and_duration(mapi: Api) -> None:
    before = await scrape(mapi)
    await start_ok(mapi, {"kind": "END_USERS", "format": "CSV", "language": "EN"})
    pending = await scrape(mapi)
    assert pending.value("uidhub_export_tasks", status="PENDING") == 1
    assert await drain(mapi) == 1
    after = await scrape(mapi)
    assert after.value("uidhub_export_tasks", status="PENDING") == 0
    assert after.value("uidhub_export_tasks", status="SUCCEEDED") == 1
    assert (
        after.value("uidhub_export_tasks_finished_total", status="SUCCEEDED")
        - before.value("uidhub_export_tasks_finished_total", status="SUCCEEDED")
        == 1
    )
    assert (
        after.value("uidhub_export_duration_seconds_count", status="SUCCEEDED")
        - before.value("uidhub_export_duration_seconds_count", status="SUCCEEDED")
        == 1
    )


async def test_websocket_connections_subscriptions_events_and_delay(sqlite_db: Database, tmp_path: Path) -> None:
    settings = Settings(
        database_url=sqlite_db.url, export_dir=str(tmp_path / "exports"), metrics=True, resync_seconds=0.2
    )
    app = create_app(settings, db=sqlite_db)
    main = await make_partner(sqlite_db, "P-MAIN")
    token = await make_token(sqlite_db, main, Role.ADMIN)
    async with serve_in_loop(app) as (address, _server), httpx.AsyncClient(timeout=30) as http:

        async def read() -> Scrape:
            response = await http.get(f"http://{address}/metrics")
            assert response.status_code == 200
            return Scrape(response.text)

        api = Api(
            client=httpx.AsyncClient(base_url=f"http://{address}", timeout=30),
            db=sqlite_db,
            settings=settings,
            tokens={"admin": token},
        )
        before = await read()
        client = await WsClient.open(address, token)
        await client.subscribe("1", BREACHES)
        open_ = await _eventually(
            read, lambda s: s.value("uidhub_active_subscriptions") - before.value("uidhub_active_subscriptions") == 1
        )
        assert open_.value("uidhub_websocket_connections") - before.value("uidhub_websocket_connections") == 1
        await breach(api, "1999000000000001")
        data = await client.next_data()
        assert data["quotaThresholdBreached"]["state"] == "BREACHED"
        sent = await read()
        assert sent.value("uidhub_subscription_events_total") - before.value("uidhub_subscription_events_total") == 1
        assert (
            sent.value("uidhub_subscription_event_delay_seconds_count")
            - before.value("uidhub_subscription_event_delay_seconds_count")
            == 1
        )
        await client.complete("1")
        await client.close()
        closed = await _eventually(
            read, lambda s: s.value("uidhub_websocket_connections") == before.value("uidhub_websocket_connections")
        )
        assert closed.value("uidhub_active_subscriptions") == before.value("uidhub_active_subscriptions")
        await api.client.aclose()


async def _eventually(read: object, condition: object, timeout: float = 10.0) -> Scrape:
    """Scrape until `condition` holds (the server updates gauges in its own tasks); a hang guard, not a bound."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await read()  # type: ignore[operator]
        if condition(current):  # type: ignore[operator]
            return current
        assert asyncio.get_running_loop().time() < deadline, "gauge did not settle"
        await asyncio.sleep(0.05)


async def test_metrics_port_of_its_own_keeps_metrics_off_the_public_port(sqlite_db: Database, tmp_path: Path) -> None:
    from tests.support.net import free_port

    port = free_port()
    settings = Settings(
        database_url=sqlite_db.url, export_dir=str(tmp_path / "exports"), metrics=True, metrics_port=port
    )
    app = create_app(settings, db=sqlite_db)
    async with serve_in_loop(app) as (address, _server), httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"http://{address}/metrics")).status_code == 404
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        scraped = Scrape(response.text)
        assert scraped.value("uidhub_database_up") == 1
    # The port closes with the app.
    with pytest.raises(httpx.HTTPError):
        await httpx.AsyncClient(timeout=5).get(f"http://127.0.0.1:{port}/metrics")


@pytest.fixture
async def sqlite_mapi(sqlite_db: Database, tmp_path: Path) -> AsyncIterator[Api]:
    """Metrics on, over SQLite only: lock waits exist only there."""
    async for value in make_api(sqlite_db, tmp_path, metrics=True):
        yield value


async def test_sqlite_writers_waiting_for_the_lock_are_counted(sqlite_mapi: Api) -> None:
    mapi = sqlite_mapi
    before = await scrape(mapi)

    async def hold_lock() -> None:
        async with mapi.db.write() as session:
            await session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the write lock is ours
            await asyncio.sleep(0.3)  # another writer's BEGIN IMMEDIATE waits meanwhile

    holder = asyncio.create_task(hold_lock())
    await asyncio.sleep(0.05)
    await mapi.gql('mutation { linkAccount(input: {uid: "1999000000000009"}) { userErrors { code } } }')
    await holder
    after = await scrape(mapi)
    assert after.value("uidhub_sqlite_busy_waits_total") - before.value("uidhub_sqlite_busy_waits_total") >= 1
    assert after.value("uidhub_sqlite_write_lock_wait_seconds_count") > before.value(
        "uidhub_sqlite_write_lock_wait_seconds_count"
    )


async def test_webhook_attempts_and_deliveries_by_status(db: Database, tmp_path: Path) -> None:
    """A receiver that fails once then accepts: one failed and one delivered attempt, the delivery SUCCEEDED."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from tests.support.accounts import link
    from uidhub.notifications.webhooks import WebhookSender

    answers = [500, 200]

    async def hook(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("", status_code=answers.pop(0) if answers else 200)

    receiver = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    async for api in make_api(
        db, tmp_path, metrics=True, webhook_allow_http_loopback=True, webhook_backoff_seconds=0.01
    ):
        async with serve_in_loop(receiver) as (address, _server):
            created = await api.gql(
                "mutation($u: String!) { createWebhookEndpoint(input: {url: $u, eventKinds: [ACCOUNT_LINKED]})"
                " { userErrors { code } } }",
                {"u": f"http://{address}/hook"},
            )
            assert created["createWebhookEndpoint"]["userErrors"] == []
            before = await scrape(api)
            await link(api, "4000000000000001")
            sender = WebhookSender(api.db, api.settings)
            try:
                assert await sender.run_once() == 1
                pending = await scrape(api)
                await asyncio.sleep(0.05)  # past the (tiny) backoff
                assert await sender.run_once() == 1
            finally:
                await sender.stop()
            after = await scrape(api)

        def attempts(s: Scrape, outcome: str) -> float:
            return s.value("uidhub_webhook_attempts_total", outcome=outcome)

        assert attempts(after, "failed") - attempts(before, "failed") == 1
        assert attempts(after, "delivered") - attempts(before, "delivered") == 1
        assert pending.value("uidhub_webhook_deliveries", status="PENDING") == 1
        assert after.value("uidhub_webhook_deliveries", status="PENDING") == 0
        assert after.value("uidhub_webhook_deliveries", status="SUCCEEDED") == 1

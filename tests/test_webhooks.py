"""Signed webhooks against a real receiver (a Starlette app under uvicorn on a loopback port)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.support.accounts import change_status, link, token_for
from tests.support.api import Api, make_api
from tests.support.db import StatementCounter
from tests.support.live import serve_in_loop
from uidhub.db import Database
from uidhub.models import EmailNotification
from uidhub.models.enums import Role, WebhookDeliveryStatus
from uidhub.models.tables import WebhookDelivery, WebhookEndpoint
from uidhub.notifications import webhooks
from uidhub.notifications.webhooks import UnsafeUrl, WebhookSender, check_url, resolve_target

ROOT = Path(__file__).resolve().parent.parent

CREATE = """mutation($input: CreateWebhookEndpointInput!) {
  createWebhookEndpoint(input: $input) {
    endpoint { id url eventKinds enabled } secret userErrors { code message field }
  }
}"""
UPDATE = """mutation($input: UpdateWebhookEndpointInput!) {
  updateWebhookEndpoint(input: $input) { endpoint { id enabled disabledReason } userErrors { code message field } }
}"""
ROTATE = """mutation($id: ID!) {
  rotateWebhookSecret(input: {id: $id}) { endpoint { previousSecretExpiresAt } secret userErrors { code } }
}"""
DELETE = "mutation($id: ID!) { deleteWebhookEndpoint(input: {id: $id}) { deletedId userErrors { code } } }"
DELIVERIES = """query($id: ID!, $first: Int) {
  webhookDeliveries(endpointId: $id, first: $first) { totalCount edges { node {
    id eventId eventKind status attemptCount lastStatusCode lastError nextAttemptAt body
    attempts { statusCode durationMs error nextAttemptAt }
  } } }
}"""
REDELIVER = """mutation($id: ID!) {
  redeliverWebhook(input: {deliveryId: $id}) { delivery { status } userErrors { code } }
}"""
SEND_TEST = """mutation($id: ID!) {
  sendTestWebhook(input: {endpointId: $id}) { delivery { eventKind } userErrors { code } }
}"""
ALL_KINDS = ["ACCOUNT_LINKED", "ACCOUNT_STATUS_CHANGED", "ALERT_BREACHED", "QUOTA_CHANGED", "POLICY_CHANGED"]


def readme_verify() -> Callable[[str, bytes, str], bool]:
    """The receiver snippet of the README's Webhooks section, executed as it stands there."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- webhook-verify -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its webhook verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    return namespace["verify"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST; `script` says how to answer the next ones (an int status, or "hang")."""

    base: str = ""
    calls: list[Received] = field(default_factory=list)
    script: list[int | str] = field(default_factory=list)
    delay: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook") -> str:
        return f"{self.base}{path}"

    def ids(self, path: str | None = None) -> list[str]:
        return [c.headers["uidhub-event-id"] for c in self.calls if path is None or c.path == path]

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.calls.append(Received(request.url.path, dict(request.headers), body))
        self.arrived.set()
        action = self.script.pop(0) if self.script else 200
        if self.delay:
            await asyncio.sleep(self.delay)
        if action == "hang":
            await asyncio.sleep(3)
            return PlainTextResponse("late")
        assert isinstance(action, int)
        return PlainTextResponse("ok", status_code=action)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/{path:path}", rec.handle, methods=["POST"])])
    async with serve_in_loop(app) as (address, _server):
        rec.base = f"http://{address}"
        yield rec


@pytest.fixture
async def wapi(db: Database, tmp_path: Path) -> AsyncIterator[Api]:
    """The API with http to loopback allowed and quick retries."""
    async for value in make_api(
        db, tmp_path, webhook_allow_http_loopback=True, webhook_backoff_seconds=0.01, webhook_timeout_seconds=2
    ):
        yield value


async def create(api: Api, url: str, *, kinds: list[str] | None = None, as_: str = "admin", **extra: Any) -> dict:
    data = await api.gql(CREATE, {"input": {"url": url, "eventKinds": kinds or ALL_KINDS, **extra}}, as_=as_)
    payload = data["createWebhookEndpoint"]
    assert payload["userErrors"] == [], payload
    return payload


def sender(api: Api, **kwargs: Any) -> WebhookSender:
    return WebhookSender(api.db, api.settings, **kwargs)


async def drain(s: WebhookSender, rounds: int = 50) -> int:
    """Run passes until one makes no attempt."""
    total = 0
    for _ in range(rounds):
        made = await s.run_once()
        total += made
        if not made:
            break
    return total


async def deliver_all(api: Api) -> int:
    """One sender, run until nothing more is due, then stopped."""
    s = sender(api)
    try:
        return await drain(s)
    finally:
        await s.stop()


async def deliveries(api: Api, endpoint_id: str, first: int = 50) -> list[dict[str, Any]]:
    data = await api.gql(DELIVERIES, {"id": endpoint_id, "first": first})
    return [e["node"] for e in data["webhookDeliveries"]["edges"]]


# ---------------------------------------------------------------- signatures and payloads


async def test_signature_verifies_and_a_tampered_body_fails(wapi: Api, receiver: Receiver) -> None:
    created = await create(wapi, receiver.url())
    secret = created["secret"]
    assert secret.startswith("whsec_")
    await link(wapi, "2000000000000001", nickname="Acme 株式会社")
    s = sender(wapi)
    try:
        assert await drain(s) == 1
    finally:
        await s.stop()
    [call] = receiver.calls
    verify = readme_verify()
    header = call.headers["uidhub-signature"]
    assert verify(secret, call.body, header)
    assert not verify(secret, call.body.replace(b"Acme", b"Evil"), header)
    assert not verify("whsec_wrong", call.body, header)
    stale = re.sub(r"t=\d+", "t=1000", header)
    assert not verify(secret, call.body, stale)
    event = call.event
    assert event["kind"] == "ACCOUNT_LINKED"
    assert event["account"] == {"uid": "2000000000000001", "nickname": "Acme 株式会社", "type": "END_USER"}
    assert event["partner"] == {"uid": "P-MAIN"}
    assert call.headers["uidhub-event-id"] == event["id"]
    assert call.headers["uidhub-event-kind"] == "ACCOUNT_LINKED"
    assert call.headers["content-type"].startswith("application/json")


async def test_rotation_signs_with_both_secrets_for_a_day(wapi: Api, receiver: Receiver) -> None:
    created = await create(wapi, receiver.url())
    old = created["secret"]
    rotated = (await wapi.gql(ROTATE, {"id": created["endpoint"]["id"]}))["rotateWebhookSecret"]
    new = rotated["secret"]
    assert new != old and rotated["userErrors"] == []
    expires = datetime.fromisoformat(rotated["endpoint"]["previousSecretExpiresAt"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
    await link(wapi, "2000000000000001")
    await deliver_all(wapi)
    [call] = receiver.calls
    verify = readme_verify()
    assert call.headers["uidhub-signature"].count("v1=") == 2
    assert verify(new, call.body, call.headers["uidhub-signature"])
    assert verify(old, call.body, call.headers["uidhub-signature"])
    # After the overlap only the new secret signs.
    later = webhooks.signing_secrets("new", "old", datetime.now(UTC) - timedelta(seconds=1), datetime.now(UTC))
    assert later == ["new"]


# ---------------------------------------------------------------- order, retries, timeouts


async def test_events_of_an_endpoint_arrive_in_log_order(wapi: Api, receiver: Receiver) -> None:
    await create(wapi, receiver.url())
    for i in range(5):
        await link(wapi, f"200000000000001{i}")
    await change_status(wapi, "2000000000000010", "TO_BE_CONFIRMED")
    await deliver_all(wapi)
    ids = receiver.ids()
    numbers = [int(i.split("-")[1]) for i in ids]
    assert len(ids) == 6 and numbers == sorted(numbers)
    assert [c.event["kind"] for c in receiver.calls][-1] == "ACCOUNT_STATUS_CHANGED"


async def test_a_500_then_200_is_delivered_exactly_once_more(wapi: Api, receiver: Receiver) -> None:
    created = await create(wapi, receiver.url())
    receiver.script = [500]
    await link(wapi, "2000000000000001")
    s = sender(wapi)
    try:
        assert await s.run_once() == 1
        [pending] = await deliveries(wapi, created["endpoint"]["id"])
        assert pending["status"] == "PENDING" and pending["lastStatusCode"] == 500 and pending["nextAttemptAt"]
        await asyncio.sleep(0.05)  # past the (tiny) backoff
        await drain(s)
        await drain(s)  # nothing more is sent once it succeeded
    finally:
        await s.stop()
    assert len(receiver.calls) == 2
    assert receiver.calls[0].body == receiver.calls[1].body
    assert receiver.ids()[0] == receiver.ids()[1]
    [done] = await deliveries(wapi, created["endpoint"]["id"])
    assert done["status"] == "SUCCEEDED" and done["attemptCount"] == 2
    assert [a["statusCode"] for a in done["attempts"]] == [500, 200]
    assert done["attempts"][0]["error"] == "HTTP 500" and done["attempts"][0]["nextAttemptAt"]


async def test_a_failing_event_holds_back_the_later_ones(wapi: Api, receiver: Receiver) -> None:
    await create(wapi, receiver.url())
    receiver.script = [503, 503]
    await link(wapi, "2000000000000001")
    await link(wapi, "2000000000000002")
    s = sender(wapi)
    try:
        await s.run_once()
        assert len(receiver.calls) == 1  # the second event waits behind the first
        await asyncio.sleep(0.05)
        await s.run_once()
        await asyncio.sleep(0.05)
        await drain(s)
    finally:
        await s.stop()
    ids = receiver.ids()
    first, second = sorted(set(ids), key=lambda i: int(i.split("-")[1]))
    assert ids == [first, first, first, second]


async def test_a_hanging_receiver_is_timed_out(db: Database, tmp_path: Path, receiver: Receiver) -> None:
    async for api in make_api(db, tmp_path, webhook_allow_http_loopback=True, webhook_timeout_seconds=0.3):
        created = await create(api, receiver.url())
        receiver.script = ["hang"]
        await link(api, "2000000000000001")
        s = sender(api)
        try:
            async with asyncio.timeout(10):  # a hang guard, not a speed assertion
                assert await s.run_once() == 1
        finally:
            await s.stop()
        [delivery] = await deliveries(api, created["endpoint"]["id"])
        assert delivery["status"] == "PENDING"
        assert delivery["lastStatusCode"] is None
        assert "timed out" in delivery["lastError"]


# ---------------------------------------------------------------- who gets what


async def test_a_disabled_endpoint_gets_nothing(wapi: Api, receiver: Receiver) -> None:
    off = await create(wapi, receiver.url("/off"), enabled=False)
    on = await create(wapi, receiver.url("/on"))
    await link(wapi, "2000000000000001")
    s = sender(wapi)
    try:
        await drain(s)
        disabled = await wapi.gql(UPDATE, {"input": {"id": on["endpoint"]["id"], "enabled": False}})
        assert disabled["updateWebhookEndpoint"]["endpoint"]["disabledReason"] == "Disabled by an operator."
        await link(wapi, "2000000000000002")
        await drain(s)
    finally:
        await s.stop()
    assert receiver.ids("/off") == []
    assert len(receiver.ids("/on")) == 1
    assert await deliveries(wapi, off["endpoint"]["id"]) == []


async def test_other_partners_endpoints_never_see_an_event(wapi: Api, receiver: Receiver) -> None:
    await create(wapi, receiver.url("/main"))
    await create(wapi, receiver.url("/other"), as_="other")
    await link(wapi, "2000000000000001")
    await link(wapi, "2000000000000002", as_="other")
    await deliver_all(wapi)
    main = [c.event for c in receiver.calls if c.path == "/main"]
    other = [c.event for c in receiver.calls if c.path == "/other"]
    assert [e["account"]["uid"] for e in main] == ["2000000000000001"]
    assert [e["account"]["uid"] for e in other] == ["2000000000000002"]
    assert {e["partner"]["uid"] for e in other} == {"P-OTHER"}


async def test_an_endpoint_gets_only_what_happened_after_it_was_created(wapi: Api, receiver: Receiver) -> None:
    await link(wapi, "2000000000000001")
    await create(wapi, receiver.url(), kinds=["ACCOUNT_LINKED"])
    await link(wapi, "2000000000000002")
    await change_status(wapi, "2000000000000002", "TO_BE_CONFIRMED")  # not subscribed
    await deliver_all(wapi)
    assert [c.event["account"]["uid"] for c in receiver.calls] == ["2000000000000002"]


async def test_alert_events_are_sent_with_money_as_strings(wapi: Api, receiver: Receiver) -> None:
    await create(wapi, receiver.url(), kinds=["ALERT_BREACHED"])
    await link(wapi, "2000000000000001", quotaAmount="100.00")
    await wapi.gql(
        'mutation { setWarningThreshold(input: {uid: "2000000000000001", percent: 50}) { userErrors { code } } }'
    )
    consumed = await wapi.gql(
        'mutation { recordConsumption(input: {uid: "2000000000000001", amount: "60.00", idempotencyKey: "k1"})'
        " { userErrors { code } } }"
    )
    assert consumed["recordConsumption"]["userErrors"] == []
    await deliver_all(wapi)
    [call] = receiver.calls
    assert call.event["kind"] == "ALERT_BREACHED"
    assert call.event["change"] == {
        "alertKind": "QUOTA_WARNING",
        "state": "BREACHED",
        "available": "40.00",
        "threshold": "50.00",
    }


# ---------------------------------------------------------------- several senders, restarts


async def test_two_workers_deliver_each_event_once(wapi: Api, receiver: Receiver) -> None:
    await create(wapi, receiver.url("/a"))
    await create(wapi, receiver.url("/b"))
    for i in range(12):
        await link(wapi, f"20000000000001{i:02d}")
    receiver.delay = 0.01
    second_db = Database(wapi.db.url)  # another worker: its own engine and pool
    one, two = sender(wapi), WebhookSender(second_db, wapi.settings)
    try:
        await asyncio.gather(drain(one), drain(two))
        await asyncio.gather(drain(one), drain(two))
    finally:
        await one.stop()
        await two.stop()
        await second_db.dispose()
    for path in ("/a", "/b"):
        ids = receiver.ids(path)
        assert len(ids) == 12 and len(set(ids)) == 12, ids
        numbers = [int(i.split("-")[1]) for i in ids]
        assert numbers == sorted(numbers)


async def test_a_restart_in_the_middle_loses_nothing(wapi: Api, receiver: Receiver) -> None:
    await create(wapi, receiver.url())
    for i in range(8):
        await link(wapi, f"20000000000002{i:02d}")
    receiver.delay = 0.05
    first = sender(wapi)
    first.start()
    for _ in range(400):
        if len(receiver.calls) >= 3:
            break
        await asyncio.sleep(0.01)
    await first.stop()  # the "crash": cancelled mid-pass, maybe mid-POST
    # A new process: the lease of the stopped sender is released (or runs out); it goes on in order.
    second = sender(wapi)
    try:
        await drain(second)
    finally:
        await second.stop()
    ids = receiver.ids()
    assert len(set(ids)) == 8
    assert len(ids) - len(set(ids)) <= 1  # at most the one POST that was in flight is repeated
    numbers = [int(i.split("-")[1]) for i in dict.fromkeys(ids)]
    assert numbers == sorted(numbers)


# ---------------------------------------------------------------- failing for too long


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


async def test_an_endpoint_failing_for_the_whole_window_is_disabled_and_the_partner_told_once(
    db: Database, tmp_path: Path, receiver: Receiver
) -> None:
    async for api in make_api(db, tmp_path, webhook_allow_http_loopback=True, webhook_backoff_seconds=0.01):
        created = await create(api, receiver.url())
        receiver.script = [500] * 10
        await link(api, "2000000000000001")
        clock = Clock(datetime.now(UTC) + timedelta(seconds=1))
        s = sender(api, clock=clock)
        try:
            assert await s.run_once() == 1
            clock.now += timedelta(hours=25)  # a day of failures later
            assert await s.run_once() == 1
            clock.now += timedelta(hours=1)
            await link(api, "2000000000000002")
            assert await drain(s) == 0  # disabled: nothing more goes out
        finally:
            await s.stop()
        assert len(receiver.calls) == 2
        [delivery] = await deliveries(api, created["endpoint"]["id"])
        assert delivery["status"] == "FAILED" and delivery["nextAttemptAt"] is None
        async with api.db.read() as session:
            endpoint = await session.scalar(select(WebhookEndpoint))
            emails = (await session.scalars(select(EmailNotification))).all()
        assert endpoint is not None and not endpoint.enabled
        assert endpoint.disabled_reason and "Disabled automatically" in endpoint.disabled_reason
        assert [e.recipients for e in emails] == [["ops@example.com"]]
        assert "disabled" in emails[0].subject
        # Enabling it again clears the failure state.
        enabled = await api.gql(UPDATE, {"input": {"id": created["endpoint"]["id"], "enabled": True}})
        assert enabled["updateWebhookEndpoint"]["endpoint"] == {
            "id": created["endpoint"]["id"],
            "enabled": True,
            "disabledReason": None,
        }


# ---------------------------------------------------------------- URLs (SSRF)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/x", True),
        ("https://93.184.216.34/x", True),
        ("http://hooks.example.com/x", False),
        ("ftp://hooks.example.com/x", False),
        ("https://10.0.0.5/x", False),
        ("https://192.168.1.1/x", False),
        ("https://169.254.169.254/latest/meta-data", False),
        ("https://127.0.0.1/x", False),
        ("https://[::1]/x", False),
        ("https://[::ffff:10.0.0.1]/x", False),
        ("https://localhost/x", False),
        ("https://user:pw@hooks.example.com/x", False),
        ("http://127.0.0.1:9/x", False),
        ("not a url", False),
    ],
)
def test_url_rules(url: str, allowed: bool) -> None:
    if allowed:
        assert check_url(url, allow_http_loopback=False, allow_private=False) == url
    else:
        with pytest.raises(UnsafeUrl):
            check_url(url, allow_http_loopback=False, allow_private=False)


def test_url_settings_open_loopback_and_private_addresses() -> None:
    assert check_url("http://127.0.0.1:9/x", allow_http_loopback=True, allow_private=False)
    with pytest.raises(UnsafeUrl):  # http stays loopback-only
        check_url("http://10.0.0.5/x", allow_http_loopback=True, allow_private=True)
    assert check_url("https://10.0.0.5/x", allow_http_loopback=False, allow_private=True)


async def test_a_host_name_resolving_to_a_private_address_is_refused_at_send_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS can point a public-looking name anywhere: the answer is checked before every POST, and pinned."""

    async def rebinding(host: str, port: int) -> list[str]:
        return {"inside.example.com": ["10.0.0.7"], "mixed.example.com": ["93.184.216.34", "127.0.0.1"]}.get(
            host, ["93.184.216.34"]
        )

    monkeypatch.setattr(webhooks, "_addresses", rebinding)
    for host in ("inside.example.com", "mixed.example.com"):
        with pytest.raises(UnsafeUrl, match="resolves to a private"):
            await resolve_target(f"https://{host}/x", allow_http_loopback=False, allow_private=False)
    target = await resolve_target("https://hooks.example.com/x", allow_http_loopback=False, allow_private=False)
    assert (target.url, target.host_header, target.sni_hostname) == (
        "https://93.184.216.34/x",
        "hooks.example.com",
        "hooks.example.com",
    )
    monkeypatch.undo()
    # localhost resolves through /etc/hosts: no network needed.
    target = await resolve_target("http://localhost:9/x", allow_http_loopback=True, allow_private=False)
    assert re.match(r"http://(127\.0\.0\.1|\[::1\]):9/x", target.url) and target.host_header == "localhost:9"


async def test_creation_refuses_unsafe_urls_with_a_coded_error(api: Api) -> None:
    for url in ("http://127.0.0.1:9/x", "https://10.1.2.3/x", "javascript:alert(1)"):
        data = await api.gql(CREATE, {"input": {"url": url, "eventKinds": ["ACCOUNT_LINKED"]}})
        payload = data["createWebhookEndpoint"]
        assert payload["endpoint"] is None and payload["secret"] is None
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [("INVALID_INPUT", ["input", "url"])]
    empty = await api.gql(CREATE, {"input": {"url": "https://hooks.example.com/x", "eventKinds": []}})
    assert empty["createWebhookEndpoint"]["userErrors"][0]["field"] == ["input", "eventKinds"]
    async with api.db.read() as session:
        assert (await session.scalars(select(WebhookEndpoint))).all() == []


# ---------------------------------------------------------------- the API


async def test_only_admins_manage_webhooks_and_only_their_own(wapi: Api, receiver: Receiver) -> None:
    created = await create(wapi, receiver.url())
    endpoint_id = created["endpoint"]["id"]
    operator = await token_for(wapi, Role.OPERATOR)
    denied = await wapi.gql("{ webhookEndpoints { id } }", token=operator, errors=True)
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    denied = await wapi.gql(
        CREATE, {"input": {"url": receiver.url(), "eventKinds": ["TEST"]}}, token=operator, errors=True
    )
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    listed = await wapi.gql("{ webhookEndpoints { id url enabled } }")
    assert listed["webhookEndpoints"] == [{"id": endpoint_id, "url": receiver.url(), "enabled": True}]
    assert await wapi.gql("{ webhookEndpoints { id } }", as_="other") == {"webhookEndpoints": []}
    node = await wapi.gql("query($id: ID!) { node(id: $id) { id } }", {"id": endpoint_id}, as_="other")
    assert node == {"node": None}
    gone = await wapi.gql(DELETE, {"id": endpoint_id}, as_="other")
    assert gone["deleteWebhookEndpoint"]["userErrors"] == [{"code": "NOT_FOUND"}]
    others = await wapi.gql(DELIVERIES, {"id": endpoint_id}, as_="other")
    assert others["webhookDeliveries"]["totalCount"] == 0
    deleted = await wapi.gql(DELETE, {"id": endpoint_id})
    assert deleted["deleteWebhookEndpoint"] == {"deletedId": endpoint_id, "userErrors": []}
    assert await wapi.gql("{ webhookEndpoints { id } }") == {"webhookEndpoints": []}


async def test_test_events_and_redelivery(wapi: Api, receiver: Receiver) -> None:
    created = await create(wapi, receiver.url(), kinds=["ACCOUNT_LINKED"])
    endpoint_id = created["endpoint"]["id"]
    sent = await wapi.gql(SEND_TEST, {"id": endpoint_id})
    assert sent["sendTestWebhook"] == {"delivery": {"eventKind": "TEST"}, "userErrors": []}
    s = sender(wapi)
    try:
        await drain(s)
        [delivery] = await deliveries(wapi, endpoint_id)
        assert delivery["status"] == "SUCCEEDED"
        again = await wapi.gql(REDELIVER, {"id": delivery["id"]})
        assert again["redeliverWebhook"] == {"delivery": {"status": "PENDING"}, "userErrors": []}
        await drain(s)
    finally:
        await s.stop()
    assert [c.event["kind"] for c in receiver.calls] == ["TEST", "TEST"]
    assert receiver.calls[0].body == receiver.calls[1].body
    [delivery] = await deliveries(wapi, endpoint_id)
    assert delivery["attemptCount"] == 2 and len(delivery["attempts"]) == 2


async def test_the_delivery_log_costs_the_same_statements_whatever_the_page_size(wapi: Api, receiver: Receiver) -> None:
    created = await create(wapi, receiver.url())
    for i in range(8):
        await link(wapi, f"20000000000003{i:02d}")
    await deliver_all(wapi)
    counts = []
    for first in (2, 8):
        with StatementCounter(wapi.db) as counter:
            page = await deliveries(wapi, created["endpoint"]["id"], first=first)
        assert len(page) == first and all(len(d["attempts"]) == 1 for d in page)
        counts.append(counter.count)
    assert counts[0] == counts[1], counts


async def test_an_export_finishing_is_sent(wapi: Api, receiver: Receiver) -> None:
    from tests.support.exports import drain as run_exports
    from tests.support.exports import start_ok

    await create(wapi, receiver.url(), kinds=["EXPORT_FINISHED"])
    await link(wapi, "2000000000000001")
    task = await start_ok(wapi, {"kind": "END_USERS", "format": "CSV", "language": "EN"})
    await run_exports(wapi)
    await deliver_all(wapi)
    [call] = receiver.calls
    assert call.event["kind"] == "EXPORT_FINISHED"
    assert call.event["change"]["status"] == "SUCCEEDED" and call.event["change"]["rowCount"] == 1
    assert task["id"]


async def test_the_running_sender_is_woken_by_a_commit(wapi: Api, receiver: Receiver) -> None:
    """With the background loop (as `uidhub serve` runs it), an event goes out without waiting for a poll."""
    await create(wapi, receiver.url())
    assert wapi.runtime is not None
    bus = wapi.runtime.bus  # the app's: the mutation below commits through the app and publishes on it
    s = WebhookSender(wapi.db, wapi.settings.model_copy(update={"webhook_poll_seconds": 60}), bus)
    s.start()
    try:
        await asyncio.sleep(0.1)  # the loop is waiting now
        await link(wapi, "2000000000000001")
        async with asyncio.timeout(10):  # hang guard: with a 60 s poll only the wake-up can deliver it
            await receiver.arrived.wait()
    finally:
        await s.stop()
    assert len(receiver.calls) == 1


async def test_no_endpoint_means_no_write_transactions(wapi: Api) -> None:
    await link(wapi, "2000000000000001")
    s = sender(wapi)
    try:
        with StatementCounter(wapi.db) as counter:
            assert await s.run_once() == 0
    finally:
        await s.stop()
    assert counter.count == 1, counter.statements


async def test_deliveries_are_queued_once_per_event_even_if_dispatch_repeats(wapi: Api, receiver: Receiver) -> None:
    await create(wapi, receiver.url())
    await link(wapi, "2000000000000001")
    async with wapi.db.write() as session:
        assert await webhooks.dispatch_once(session) == 1
    # A pass that died after queueing would repeat from the old cursor: the unique pair absorbs it.
    async with wapi.db.write() as session:
        cursor = await session.scalar(select(webhooks.WebhookCursor).where(webhooks.WebhookCursor.source == "audit"))
        assert cursor is not None
        cursor.last_id = 0
    async with wapi.db.write() as session:
        await webhooks.dispatch_once(session)
    async with wapi.db.read() as session:
        rows = (await session.scalars(select(WebhookDelivery))).all()
    assert len(rows) == 1 and rows[0].status is WebhookDeliveryStatus.PENDING

"""Live subscriptions in process: strawberry's schema.subscribe with a websocket context, on SQLite and PostgreSQL.

Writes go through the real mutations over the in-process HTTP app (`api`),
so events are stored and published by the app's own code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.accounts import link
from tests.support.api import Api, make_partner, make_token
from tests.support.live import ACCOUNT_EVENTS, BREACHES
from uidhub.models.enums import Role
from uidhub.notifications.feed import Feeds
from uidhub.resolvers.auth import authenticate
from uidhub.runtime import Runtime
from uidhub.schema import build_schema
from uidhub.schema.common import to_global_id
from uidhub.schema.context import Context


class Sub:
    """One subscription pumped into a queue by a task of its own (a timeout never breaks the generator)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for result in self.stream:
            await self.queue.put(result)

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        result = await asyncio.wait_for(self.queue.get(), timeout)
        assert not result.errors, result.errors
        return result.data

    async def first_error(self, timeout: float = 10.0) -> list[Any]:
        result = await asyncio.wait_for(self.queue.get(), timeout)
        assert result.errors
        return result.errors

    async def nothing_for(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            result = await asyncio.wait_for(self.queue.get(), seconds)
            raise AssertionError(f"unexpected event {result}")

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.stream.aclose()


@pytest.fixture
async def subscribe(api: Api) -> AsyncIterator[Any]:
    schema = build_schema()
    assert api.runtime is not None
    runtime = api.runtime
    opened: list[Sub] = []

    async def start(
        query: str, variables: dict[str, Any] | None = None, *, token: str | None = None, as_: str = "admin"
    ) -> Sub:
        async with api.db.read() as session:
            actor = await authenticate(session, token or api.tokens[as_])
        assert actor is not None
        context = Context(runtime, actor=actor, websocket=True)
        stream = await schema.subscribe(query, variable_values=variables or {}, context_value=context)
        sub = Sub(stream)
        opened.append(sub)
        return sub

    yield start
    for sub in opened:
        await sub.close()


async def breach(api: Api, uid: str, *, key: str) -> None:
    """Warning at 50 % of 100.00, then 60.00 consumed: available 40.00 < 50.00 — one BREACHED event."""
    data = await api.gql(
        "mutation($uid: String!) { setWarningThreshold(input: {uid: $uid, percent: 50}) { userErrors { code } } }",
        {"uid": uid},
    )
    assert data["setWarningThreshold"]["userErrors"] == []
    data = await api.gql(
        "mutation($uid: String!, $key: String!) { recordConsumption(input: "
        '{uid: $uid, amount: "60.00", idempotencyKey: $key}) { userErrors { code } } }',
        {"uid": uid, "key": key},
    )
    assert data["recordConsumption"]["userErrors"] == []


async def test_account_events_live_then_filtered(api: Api, subscribe: Any) -> None:
    everything = await subscribe(ACCOUNT_EVENTS)
    only_b = await subscribe(ACCOUNT_EVENTS, {"uids": ["B1"]})
    other = await subscribe(ACCOUNT_EVENTS, as_="other")
    await link(api, "A1", quotaAmount="100.00")
    await link(api, "B1", quotaAmount="100.00")
    seen = [await everything.next() for _ in range(2)]
    uids = [item["accountEvents"]["account"]["uid"] for item in seen]
    # Each link writes its entries in one transaction; A1's come first.
    assert uids[0] == "A1"
    while uids[-1] != "B1":
        uids.append((await everything.next())["accountEvents"]["account"]["uid"])
    got = await only_b.next()
    assert got["accountEvents"]["account"]["uid"] == "B1"
    await other.nothing_for(0.3)


async def test_account_events_after_id_replays_in_order_then_live(api: Api, subscribe: Any) -> None:
    for uid in ("R1", "R2", "R3"):
        await link(api, uid, quotaAmount="100.00")
    data = await api.gql("{ auditEntries(first: 100) { edges { node { id account { uid } } } } }")
    stored = [e["node"] for e in reversed(data["auditEntries"]["edges"])]  # oldest first
    first_id = stored[0]["id"]
    sub = await subscribe(ACCOUNT_EVENTS, {"afterId": first_id})
    replayed = [(await sub.next())["accountEvents"]["id"] for _ in range(len(stored) - 1)]
    assert replayed == [e["id"] for e in stored[1:]]
    await sub.nothing_for(0.2)
    await link(api, "R4", quotaAmount="100.00")
    live = await sub.next()
    assert live["accountEvents"]["account"]["uid"] == "R4"


async def test_breach_reaches_subscriber_of_its_partner_only(api: Api, subscribe: Any) -> None:
    mine = await subscribe(BREACHES)
    theirs = await subscribe(BREACHES, as_="other")
    await link(api, "Q1", quotaAmount="100.00")
    await breach(api, "Q1", key="k1")
    event = (await mine.next(timeout=2.0))["quotaThresholdBreached"]
    assert event["kind"] == "QUOTA_WARNING"
    assert event["state"] == "BREACHED"
    assert event["account"]["uid"] == "Q1"
    assert event["available"] == "40.00"
    await theirs.nothing_for(0.3)


async def test_breaches_after_id_and_end_user_scope(api: Api, subscribe: Any) -> None:
    await link(api, "E1", quotaAmount="100.00")
    await link(api, "E2", quotaAmount="100.00")
    await breach(api, "E1", key="e1")
    data = await api.gql("{ alertEvents { edges { node { id account { uid } } } } }")
    (first,) = [e["node"] for e in data["alertEvents"]["edges"]]
    partner = await make_partner(api.db, "P-EU")  # unused partner: its end user sees nothing of P-MAIN
    del partner
    from sqlalchemy import select

    from uidhub.models import Partner

    async with api.db.read() as session:
        main = await session.scalar(select(Partner).where(Partner.uid == "P-MAIN"))
    end_user_token = await make_token(api.db, main, Role.END_USER, account_uid="E2")
    replay_all = await subscribe(BREACHES, {"afterId": to_global_id("QuotaAlertEvent", 0)})
    after_first = await subscribe(BREACHES, {"afterId": first["id"]})
    own = await subscribe(BREACHES, token=end_user_token)
    assert (await replay_all.next())["quotaThresholdBreached"]["id"] == first["id"]
    await breach(api, "E2", key="e2")
    second = (await replay_all.next())["quotaThresholdBreached"]
    assert second["account"]["uid"] == "E2"
    assert (await after_first.next())["quotaThresholdBreached"]["id"] == second["id"]
    assert (await own.next())["quotaThresholdBreached"]["id"] == second["id"]
    await replay_all.nothing_for(0.2)


async def test_bad_after_id_and_too_many_uids_are_errors(api: Api, subscribe: Any) -> None:
    wrong_type = await subscribe(BREACHES, {"afterId": to_global_id("AuditEntry", 1)})
    errors = await wrong_type.first_error()
    assert errors[0].extensions["code"] == "BAD_USER_INPUT"
    too_many = await subscribe(ACCOUNT_EVENTS, {"uids": [f"U{i}" for i in range(101)]})
    errors = await too_many.first_error()
    assert errors[0].extensions["code"] == "BAD_USER_INPUT"


async def waiting_subscribers(api: Api, queries: list[str], resync: float = 30.0) -> tuple[list[Sub], Runtime]:
    """Subscriptions (admin token) that have caught up and wait on the shared feed, so a test can measure one event.

    A long resync keeps idle polls out of the measured window.
    """
    schema = build_schema()
    assert api.runtime is not None
    runtime = dataclasses.replace(
        api.runtime, settings=api.settings.model_copy(update={"resync_seconds": resync}), feeds=Feeds()
    )
    async with api.db.read() as session:
        actor = await authenticate(session, api.tokens["admin"])
    assert actor is not None
    subs = [
        Sub(await schema.subscribe(query, context_value=Context(runtime, actor=actor, websocket=True)))
        for query in queries
    ]
    key = f"breached:{actor.partner_id}"
    for _ in range(1000):  # up to 10 s on a loaded machine
        feed = runtime.feeds._feeds.get(key)
        waiting = [s for s in feed._subscribers if s.queue._getters] if feed else []
        if feed is not None and feed.idle and len(waiting) == len(subs):  # the feed's first read is done too
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("subscribers did not catch up")
    return subs, runtime


async def test_one_read_per_event_whatever_the_number_of_subscribers(api: Api) -> None:
    """The shared feed reads each batch once: SQL per breach is the same for 2 and for 20 subscribers."""
    from tests.support.db import StatementCounter

    async def statements_for_breach(subscribers: int, uid: str) -> int:
        await link(api, uid, quotaAmount="100.00")
        subs, _ = await waiting_subscribers(api, [BREACHES] * subscribers)
        try:
            with StatementCounter(api.db) as counter:
                await breach(api, uid, key=f"k-{uid}")
                for sub in subs:
                    data = await sub.next()
                    assert data["quotaThresholdBreached"]["account"]["uid"] == uid
            return counter.count
        finally:
            for sub in subs:
                await sub.close()

    few = await statements_for_breach(2, "F1")
    many = await statements_for_breach(20, "F2")
    assert few == many, (few, many)


async def test_one_execution_per_distinct_selection(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 subscribers of one selection cost one execution of it per event; another selection costs its own."""
    from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

    executed: list[str] = []
    original = StrawberryGraphQLCoreExecutionContext.execute_operation

    def counting(self: Any, serially: bool | None = None) -> Any:
        if self.operation.operation.value == "subscription":
            executed.append(self.operation.selection_set.selections[0].selection_set.selections[0].name.value)
        return original(self, serially)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "execute_operation", counting)
    other = "subscription { quotaThresholdBreached { state account { uid nickname } } }"
    await link(api, "X1", quotaAmount="100.00")
    subs, _ = await waiting_subscribers(api, [BREACHES] * 20 + [other] * 5)
    try:
        await breach(api, "X1", key="k-X1")
        results = [await sub.next() for sub in subs]
    finally:
        for sub in subs:
            await sub.close()
    assert all(r["quotaThresholdBreached"]["account"]["uid"] == "X1" for r in results)
    assert results[0] == results[19] and "id" in results[0]["quotaThresholdBreached"]
    assert "id" not in results[20]["quotaThresholdBreached"]
    # One execution per distinct selection (BREACHES starts with `id`, the other with `state`).
    assert sorted(executed) == ["id", "state"], executed

"""graphql-transport-ws against a real uvicorn on a loopback port, with the `websockets` package as client.

The server runs inside the test's event loop (`serve_in_loop`) so that the
soak test can count its asyncio tasks; writes go through the server's HTTP
API (the mutations), i.e. the app's own code path.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.api import make_partner, make_token
from tests.support.live import (
    ACCOUNT_EVENTS,
    BREACHES,
    PROTOCOL,
    WsClient,
    gql,
    latest_ids,
    link_over_http,
    serve_in_loop,
)
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.models.enums import Role
from uidhub.settings import Settings


@dataclass
class LiveServer:
    address: str
    app: Any
    tokens: dict[str, str]

    async def client(self, as_: str = "admin") -> WsClient:
        return await WsClient.open(self.address, self.tokens[as_])

    async def gql(self, query: str, variables: dict[str, Any] | None = None, as_: str = "admin") -> dict[str, Any]:
        return await gql(self.address, self.tokens[as_], query, variables)

    async def breach(self, uid: str, key: str) -> None:
        """Link `uid` with 100.00, warning at 50 %, consume 60.00: exactly one BREACHED event."""
        await link_over_http(self.address, self.tokens["admin"], uid)
        data = await self.gql(
            "mutation($uid: String!) { setWarningThreshold(input: {uid: $uid, percent: 50}) { userErrors { code } } }",
            {"uid": uid},
        )
        assert data["setWarningThreshold"]["userErrors"] == []
        await self.consume(uid, key)

    async def consume(self, uid: str, key: str) -> None:
        data = await self.gql(
            "mutation($uid: String!, $key: String!) { recordConsumption(input: "
            '{uid: $uid, amount: "60.00", idempotencyKey: $key}) { userErrors { code } } }',
            {"uid": uid, "key": key},
        )
        assert data["recordConsumption"]["userErrors"] == []


@pytest.fixture
async def server(db: Database, tmp_path: Path) -> AsyncIterator[LiveServer]:
    settings = Settings(database_url=db.url, export_dir=str(tmp_path / "exports"), resync_seconds=1.0)
    app = create_app(settings, db=db)
    main = await make_partner(db, "P-MAIN")
    other = await make_partner(db, "P-OTHER")
    tokens = {"admin": await make_token(db, main, Role.ADMIN), "other": await make_token(db, other, Role.ADMIN)}
    async with serve_in_loop(app) as (address, _server):
        yield LiveServer(address, app, tokens)


# ---------------------------------------------------------------- connection


async def test_bad_or_missing_token_closes_4403_good_token_is_acknowledged(server: LiveServer) -> None:
    for token in ("uh_not-a-token", None):
        client = await WsClient.open(server.address, token, ack=False)
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    client = await server.client()  # asserts connection_ack
    await client.close()


async def test_legacy_graphql_ws_subprotocol_is_refused(server: LiveServer) -> None:
    ws = await connect(f"ws://{server.address}/graphql", subprotocols=["graphql-ws"])  # type: ignore[list-item]
    async with ws:
        # The handshake names the offered subprotocol (clients abort one without it), then 4406 says why.
        assert ws.subprotocol == "graphql-ws"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send('{"type": "connection_init", "payload": {}}')
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4406


async def test_protocol_violations_close_with_the_protocol_codes(server: LiveServer) -> None:
    ws = await connect(f"ws://{server.address}/graphql", subprotocols=[PROTOCOL])  # type: ignore[list-item]
    unacked = WsClient(ws)
    await unacked.subscribe("1", BREACHES)
    with pytest.raises(ConnectionClosed) as closed:
        await unacked.receive()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

    client = await server.client()
    await client.subscribe("1", BREACHES)
    await client.subscribe("1", BREACHES)
    with pytest.raises(ConnectionClosed) as closed:
        await client.receive()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409


async def test_subscriptions_per_connection_are_capped(server: LiveServer) -> None:
    client = await server.client()
    for n in range(20):
        await client.subscribe(str(n), BREACHES)
    await client.subscribe("21", BREACHES)
    message = await client.receive()
    assert message["type"] == "error" and message["id"] == "21"
    assert "limit" in message["payload"][0]["message"].lower()
    await client.close()


async def test_queries_over_the_socket_are_refused(server: LiveServer) -> None:
    client = await server.client()
    await client.subscribe("q", "{ viewer { method } }")
    message = await client.receive()
    assert message["type"] in ("error", "next")
    payload = message["payload"]
    errors = payload if isinstance(payload, list) else payload["errors"]
    assert errors[0]["extensions"]["code"] == "BAD_REQUEST"
    await client.close()


# ---------------------------------------------------------------- delivery


async def test_breach_reaches_subscriber_within_a_second_and_no_other_partner(server: LiveServer) -> None:
    mine = await server.client()
    theirs = await server.client("other")
    after = (await latest_ids(server.address, server.tokens["admin"]))["alerts"]
    await mine.subscribe("b", BREACHES, {"afterId": after})
    await theirs.subscribe("b", BREACHES)
    await link_over_http(server.address, server.tokens["admin"], "W1")
    await server.gql('mutation { setWarningThreshold(input: {uid: "W1", percent: 50}) { userErrors { code } } }')
    started = time.monotonic()
    await server.consume("W1", "w1")
    event = (await mine.next_data(timeout=1.0))["quotaThresholdBreached"]
    elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert (event["kind"], event["state"], event["account"]["uid"]) == ("QUOTA_WARNING", "BREACHED", "W1")
    await theirs.nothing_for(0.5)
    await mine.close()
    await theirs.close()


async def test_reconnect_with_after_id_gets_exactly_the_missed_events_then_live(server: LiveServer) -> None:
    client = await server.client()
    after = (await latest_ids(server.address, server.tokens["admin"]))["alerts"]
    await client.subscribe("b", BREACHES, {"afterId": after})
    await server.breach("M1", "m1")
    first = (await client.next_data())["quotaThresholdBreached"]
    await client.close()

    await server.breach("M2", "m2")  # missed while disconnected
    await server.breach("M3", "m3")
    client = await server.client()
    await client.subscribe("b", BREACHES, {"afterId": first["id"]})
    missed = [(await client.next_data())["quotaThresholdBreached"]["account"]["uid"] for _ in range(2)]
    assert missed == ["M2", "M3"]
    await client.nothing_for(0.3)  # no duplicate
    await server.breach("M4", "m4")
    live = (await client.next_data())["quotaThresholdBreached"]
    assert live["account"]["uid"] == "M4"
    await client.nothing_for(0.3)
    await client.close()


async def test_account_events_over_the_socket_with_uids_filter(server: LiveServer) -> None:
    client = await server.client()
    after = (await latest_ids(server.address, server.tokens["admin"]))["audit"]
    await client.subscribe("a", ACCOUNT_EVENTS, {"uids": ["F2"], "afterId": after})
    await link_over_http(server.address, server.tokens["admin"], "F1")
    await link_over_http(server.address, server.tokens["admin"], "F2")
    entry = (await client.next_data())["accountEvents"]
    assert entry["account"]["uid"] == "F2"
    await client.close()


# ---------------------------------------------------------------- soak


def _settle_tasks() -> int:
    return len(asyncio.all_tasks())


async def _wait_for_tasks(at_most: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    count = _settle_tasks()
    while count > at_most and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        count = _settle_tasks()
    return count


async def test_soak_500_subscribe_complete_cycles_leave_tasks_and_topics_flat(server: LiveServer) -> None:
    bus = server.app.state.uidhub.runtime.bus

    async def cycle(n: int) -> None:
        client = await server.client()
        await client.subscribe("b", BREACHES)
        proves = n % 100 == 0
        after = (await latest_ids(server.address, server.tokens["admin"]))["audit"] if proves else None
        await client.subscribe("a", ACCOUNT_EVENTS, {"afterId": after})
        if proves:  # now and then prove the subscription is live before it is cancelled
            await link_over_http(server.address, server.tokens["admin"], f"S{n}")
            assert (await client.next_data())["accountEvents"]["account"]["uid"] == f"S{n}"
        if n % 2 == 0:
            await client.complete("b")
            await client.complete("a")
        await client.close()  # odd cycles: the disconnect cancels both

    for n in range(1, 21):  # warm-up: pools, caches, lazily created tasks
        await cycle(n)
    gc.collect()
    baseline = await _wait_for_tasks(0, timeout=0.5)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    started = time.monotonic()
    for n in range(500):
        await cycle(n)
        if n == 249:
            gc.collect()
            halfway, _ = tracemalloc.get_traced_memory()
    elapsed = time.monotonic() - started
    after_tasks = await _wait_for_tasks(baseline)
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"\nsoak: 500 cycles in {elapsed:.1f}s; asyncio tasks {baseline} -> {after_tasks}; "
        f"traced memory {before / 1024:.0f} -> {halfway / 1024:.0f} (250) -> {after / 1024:.0f} KiB (500), "
        f"peak {peak / 1024:.0f} KiB; "
        f"bus topics {sorted(bus._events)}"
    )
    assert after_tasks <= baseline
    # Background workers (outbox sender, exports) wait on topics of their own; subscriptions left none.
    assert not [t for t in bus._events if t.startswith(("alerts:", "audit:"))]

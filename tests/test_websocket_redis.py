"""Fan-out across workers: two uvicorn processes over one database, waking each other through Redis.

Process 1 takes the writes (HTTP mutations), process 2 serves the
subscriber. With Redis, process 2's resync poll is set to 30 s, so delivery
within a second can only come from the Redis wake-up. Without the Redis
message (process 1 does not publish), delivery still happens at process 2's
next resync poll (1 s), and nothing is lost.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.api import make_partner, make_token
from tests.support.db import REDIS_URL, needs_postgres, needs_redis, sqlite_url_for, truncate_all
from tests.support.live import ACCOUNT_EVENTS, BREACHES, ServerProcess, WsClient, gql, latest_ids, link_over_http
from uidhub.db import Database
from uidhub.models.enums import Role

pytestmark = needs_redis


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=needs_postgres)])
async def shared_url(request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, empty database both server processes use: a SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        yield sqlite_url_for(sqlite_template, tmp_path)
        return
    url = request.getfixturevalue("pg_database_url")
    database = Database(url)
    await truncate_all(database)
    await database.dispose()
    yield url


async def _tokens(url: str) -> dict[str, str]:
    database = Database(url)
    try:
        main = await make_partner(database, "P-MAIN")
        other = await make_partner(database, "P-OTHER")
        return {
            "admin": await make_token(database, main, Role.ADMIN),
            "other": await make_token(database, other, Role.ADMIN),
        }
    finally:
        await database.dispose()


def _env(url: str, tmp_path: Path, *, redis: bool, resync: float) -> dict[str, str]:
    env = {
        "UIDHUB_DATABASE_URL": url,
        "UIDHUB_EXPORT_DIR": str(tmp_path / "exports"),
        "UIDHUB_RESYNC_SECONDS": str(resync),
    }
    if redis:
        assert REDIS_URL is not None
        env["UIDHUB_REDIS_URL"] = REDIS_URL
    return env


async def _breach(address: str, token: str, uid: str) -> float:
    """Link, warn at 50 %, consume 60 %; the monotonic time just before the breaching commit."""
    await link_over_http(address, token, uid)
    await gql(
        address,
        token,
        "mutation($u: String!) { setWarningThreshold(input: {uid: $u, percent: 50}) { userErrors { code } } }",
        {"u": uid},
    )
    started = time.monotonic()
    data = await gql(
        address,
        token,
        'mutation($u: String!) { recordConsumption(input: {uid: $u, amount: "60.00", '
        "idempotencyKey: $u}) { userErrors { code } } }",
        {"u": uid},
    )
    assert data["recordConsumption"]["userErrors"] == []
    return started


async def test_event_committed_on_one_process_reaches_the_other(shared_url: str, tmp_path: Path) -> None:
    tokens = await _tokens(shared_url)
    one = ServerProcess(_env(shared_url, tmp_path, redis=True, resync=30.0))
    two = ServerProcess(_env(shared_url, tmp_path, redis=True, resync=30.0))
    try:
        await one.wait_ready()
        await two.wait_ready()
        subscriber = await WsClient.open(two.address, tokens["admin"])
        bystander = await WsClient.open(two.address, tokens["other"])
        after = await latest_ids(two.address, tokens["admin"])
        await subscriber.subscribe("b", BREACHES, {"afterId": after["alerts"]})
        await subscriber.subscribe("a", ACCOUNT_EVENTS, {"uids": ["X1"], "afterId": after["audit"]})
        await bystander.subscribe("b", BREACHES)
        await subscriber.nothing_for(0.3)  # nothing stored yet: the replay is empty
        started = await _breach(one.address, tokens["admin"], "X1")
        seen: dict[str, dict] = {}
        while "b" not in seen:
            message = await subscriber.receive(timeout=5.0)
            assert message["type"] == "next", message
            seen.setdefault(message["id"], message["payload"]["data"])
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, f"took {elapsed:.2f}s: only Redis can wake process 2 this fast (resync is 30 s)"
        assert seen["b"]["quotaThresholdBreached"]["account"]["uid"] == "X1"
        assert seen["a"]["accountEvents"]["account"]["uid"] == "X1"
        await bystander.nothing_for(0.3)
        await subscriber.close()
        await bystander.close()
    finally:
        one.stop()
        two.stop()


async def test_a_lost_redis_message_delays_delivery_to_the_resync_poll_only(shared_url: str, tmp_path: Path) -> None:
    tokens = await _tokens(shared_url)
    one = ServerProcess(_env(shared_url, tmp_path, redis=False, resync=1.0))  # publishes nothing to Redis
    two = ServerProcess(_env(shared_url, tmp_path, redis=True, resync=1.0))
    try:
        await one.wait_ready()
        await two.wait_ready()
        subscriber = await WsClient.open(two.address, tokens["admin"])
        after = (await latest_ids(two.address, tokens["admin"]))["alerts"]
        await subscriber.subscribe("b", BREACHES, {"afterId": after})
        await subscriber.nothing_for(0.3)
        started = await _breach(one.address, tokens["admin"], "L1")
        await _breach(one.address, tokens["admin"], "L2")
        uids = [(await subscriber.next_data(timeout=3.0))["quotaThresholdBreached"]["account"]["uid"] for _ in range(2)]
        elapsed = time.monotonic() - started
        assert uids == ["L1", "L2"]
        assert elapsed < 1.0 + 1.5, f"took {elapsed:.2f}s with a 1 s resync"
        await subscriber.nothing_for(1.5)  # nothing twice
        await subscriber.close()
    finally:
        one.stop()
        two.stop()

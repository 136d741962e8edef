"""The HTTP actor cache (resolvers.auth.ActorCache): a request with a known token pays no query to authenticate,
and a revocation is honoured at once in the revoking process, at once in a server woken through Redis, and
within `token_cache_seconds` without a wake-up.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import update

from tests.support.api import make_api, make_partner, make_token
from tests.support.db import REDIS_URL, StatementCounter, needs_redis
from tests.support.live import serve_in_loop
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.models import ApiToken
from uidhub.models.enums import Role
from uidhub.notifications.bus import make_bus
from uidhub.resolvers.auth import REVOKED_TOPIC, hash_token, revoke_token
from uidhub.settings import Settings

VIEWER = {"query": "{ viewer { method } }"}
#: A hang guard for a loaded CI machine, not a speed assertion.
GUARD = 30.0


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _revoke_elsewhere(db: Database, token: str) -> None:
    """The revocation as another process commits it: this process hears nothing of it."""
    async with db.write() as session:
        await session.execute(
            update(ApiToken).values(revoked_at=datetime.now(UTC)).where(ApiToken.token_hash == hash_token(token))
        )


async def test_a_cached_token_costs_no_query_and_an_in_process_revocation_is_at_once(
    db: Database, tmp_path: Path
) -> None:
    async for api in make_api(db, tmp_path, token_cache_seconds=3600):
        token = api.tokens["admin"]
        with StatementCounter(db) as first:
            assert (await api.client.post("/graphql", json=VIEWER, headers=_auth(token))).status_code == 200
        with StatementCounter(db) as second:
            assert (await api.client.post("/graphql", json=VIEWER, headers=_auth(token))).status_code == 200
        assert any("api_tokens" in s for s in first.statements), first.statements
        assert not any("api_tokens" in s for s in second.statements), second.statements

        async with db.write() as session:  # revoke_token in this process, as the CLI runs it
            _token, revoked = await revoke_token(session, prefix=token)
            assert revoked
            assert (await api.client.post("/graphql", json=VIEWER, headers=_auth(token))).status_code == 200
        # Committed: refused from the next request on, an hour-long cache notwithstanding.
        response = await api.client.post("/graphql", json=VIEWER, headers=_auth(token))
        assert response.status_code == 401
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert (await api.client.post("/graphql", json=VIEWER, headers=_auth(api.tokens["other"]))).status_code == 200


async def test_without_a_cache_a_revocation_elsewhere_is_refused_at_once(db: Database, tmp_path: Path) -> None:
    async for api in make_api(db, tmp_path, token_cache_seconds=0):
        token = api.tokens["admin"]
        assert (await api.client.post("/graphql", json=VIEWER, headers=_auth(token))).status_code == 200
        await _revoke_elsewhere(db, token)
        assert (await api.client.post("/graphql", json=VIEWER, headers=_auth(token))).status_code == 401


async def test_a_revocation_elsewhere_ends_with_the_entry_or_the_token_watch_pass(db: Database, tmp_path: Path) -> None:
    settings = Settings(database_url=db.url, export_dir=str(tmp_path / "exports"), token_cache_seconds=3600)
    token = await make_token(db, await make_partner(db, "P-MAIN"), Role.VIEWER)
    app = create_app(settings, db=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.post("/graphql", json=VIEWER, headers=_auth(token))).status_code == 200
        await _revoke_elsewhere(db, token)
        # The documented window: the worker still trusts the token it authenticated, until the entry ends...
        assert (await client.post("/graphql", json=VIEWER, headers=_auth(token))).status_code == 200
        # ...or until the token watch's next pass (at once on the revocation's Redis wake-up) empties the cache.
        watch = app.state.uidhub.token_watch
        assert watch.on_pass is not None
        watch.on_pass()
        assert (await client.post("/graphql", json=VIEWER, headers=_auth(token))).status_code == 401


@needs_redis
async def test_the_redis_wake_up_of_a_revocation_reaches_the_cache(db: Database, tmp_path: Path) -> None:
    assert REDIS_URL is not None
    settings = Settings(
        database_url=db.url,
        export_dir=str(tmp_path / "exports"),
        redis_url=REDIS_URL,
        token_recheck_seconds=3600,
        token_cache_seconds=3600,
    )
    partner = await make_partner(db, "P-MAIN")
    token = await make_token(db, partner, Role.VIEWER)
    app = create_app(settings, db=db)
    bus = make_bus(REDIS_URL)
    await bus.start()
    try:
        async with serve_in_loop(app) as (address, _server), httpx.AsyncClient(timeout=GUARD) as http:
            url = f"http://{address}/graphql"
            assert (await http.post(url, json=VIEWER, headers=_auth(token))).status_code == 200
            await _revoke_elsewhere(db, token)
            await bus.publish(REVOKED_TOPIC)  # what `uidhub revoke-token` does after its commit
            status = 200
            for _ in range(int(GUARD / 0.05)):  # the wake-up crosses Redis: poll, bounded by the hang guard
                status = (await http.post(url, json=VIEWER, headers=_auth(token))).status_code
                if status != 200:
                    break
                await asyncio.sleep(0.05)
            assert status == 401
    finally:
        await bus.close()

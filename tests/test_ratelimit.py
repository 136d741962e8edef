"""Rate limits and websocket caps (issue 17 item 8), over real HTTP and real websockets.

HTTP goes through httpx into the ASGI app (the client address set per
transport) or into uvicorn on loopback; websockets are the `websockets`
client against uvicorn. Limits are set low per test through the settings;
with Redis the counters are shared by two app instances (two uvicorn
servers), each test under its own key prefix.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.api import make_partner, make_token
from tests.support.db import REDIS_URL, needs_redis
from tests.support.live import PROTOCOL, WsClient, serve_in_loop
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.models.enums import Role
from uidhub.ratelimit import WS_RATE_LIMITED
from uidhub.settings import Settings

VIEWER = "{ viewer { method } }"
#: A refill so slow that no test ever sees a token come back (no timing in these tests).
NO_REFILL = 0.0001


def _settings(db: Database, tmp_path: Path, **values: Any) -> Settings:
    return Settings(
        _env_file=None,
        database_url=db.url,
        export_dir=str(tmp_path / "exports"),  # type: ignore[call-arg]
        **values,
    )


async def _tokens(db: Database) -> dict[str, str]:
    main = await make_partner(db, "P-MAIN")
    other = await make_partner(db, "P-OTHER")
    return {"admin": await make_token(db, main, Role.ADMIN), "other": await make_token(db, other, Role.ADMIN)}


def _client(app: Any, ip: str = "127.0.0.1", base_url: str = "http://test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 40000)), base_url=base_url)


async def _post(client: httpx.AsyncClient, token: str | None, query: str = VIEWER) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.post("/graphql", json={"query": query}, headers=headers)


def _assert_rate_limited(response: httpx.Response, words: str) -> None:
    """429, a whole-second Retry-After, and the GraphQL error shape with code RATE_LIMITED."""
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"].isdigit() and int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["data"] is None
    error = body["errors"][0]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["retryAfter"] == int(response.headers["retry-after"])
    assert words in error["message"]


# ---------------------------------------------------------------- HTTP


async def test_a_burst_beyond_the_token_limit_gets_429_with_retry_after(sqlite_db: Database, tmp_path: Path) -> None:
    tokens = await _tokens(sqlite_db)
    app = create_app(
        _settings(sqlite_db, tmp_path, rate_limit_token_burst=5, rate_limit_token_per_second=NO_REFILL), db=sqlite_db
    )
    async with _client(app) as client:
        for _ in range(5):
            assert (await _post(client, tokens["admin"])).status_code == 200
        _assert_rate_limited(await _post(client, tokens["admin"]), "for this token")
        _assert_rate_limited(await _post(client, tokens["admin"]), "for this token")
        # Another token from the same address has its own budget.
        response = await _post(client, tokens["other"])
        assert response.status_code == 200 and response.json()["data"]["viewer"]["method"] == "PLATFORM"


async def test_a_burst_from_one_address_is_limited_whatever_the_token(sqlite_db: Database, tmp_path: Path) -> None:
    tokens = await _tokens(sqlite_db)
    app = create_app(
        _settings(sqlite_db, tmp_path, rate_limit_ip_burst=6, rate_limit_ip_per_second=NO_REFILL), db=sqlite_db
    )
    async with _client(app, "192.0.2.10") as client, _client(app, "192.0.2.11") as neighbour:
        for n in range(6):
            assert (await _post(client, tokens["admin" if n % 2 else "other"])).status_code == 200
        _assert_rate_limited(await _post(client, tokens["other"]), "from your address")
        _assert_rate_limited(await _post(client, None), "from your address")
        # The export download route is behind the same limit.
        _assert_rate_limited(await client.get("/exports/1/download"), "from your address")
        # Health checks are never limited; another address is served.
        assert (await client.get("/healthz")).status_code == 200
        assert (await _post(neighbour, tokens["admin"])).status_code == 200


async def test_wrong_token_guesses_are_limited_per_address(sqlite_db: Database, tmp_path: Path) -> None:
    tokens = await _tokens(sqlite_db)
    app = create_app(_settings(sqlite_db, tmp_path, auth_failures_per_ip=4), db=sqlite_db)
    async with _client(app, "198.51.100.7") as guesser, _client(app, "198.51.100.8") as neighbour:
        # A request without any token is no guess: it does not count.
        for _ in range(6):
            assert (await _post(guesser, None)).status_code == 401
        for n in range(3):
            response = await _post(guesser, f"uh_guess-{n}")
            assert response.status_code == 401
            assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        # Wrong tokens on the download route count too: the fourth guess.
        assert (
            await guesser.get("/exports/1/download", headers={"Authorization": "Bearer uh_guess-3"})
        ).status_code == 401
        # From now on every request from that address is refused before its token is looked at.
        for n in range(4, 10):
            _assert_rate_limited(await _post(guesser, f"uh_guess-{n}"), "failed authentication")
        _assert_rate_limited(await _post(guesser, tokens["admin"]), "failed authentication")
        # Another address is unaffected.
        assert (await _post(neighbour, tokens["admin"])).status_code == 200
        assert (await _post(neighbour, "uh_wrong")).status_code == 401


async def test_ipv6_clients_are_counted_per_64_block(sqlite_db: Database, tmp_path: Path) -> None:
    """Hopping through the addresses of one /64 does not reset the wrong-token count."""
    app = create_app(_settings(sqlite_db, tmp_path, auth_failures_per_ip=2), db=sqlite_db)
    for n in range(2):
        async with _client(app, f"2001:db8:1:2::{n + 1}") as client:
            assert (await _post(client, "uh_wrong")).status_code == 401
    async with _client(app, "2001:db8:1:2::99") as client:
        _assert_rate_limited(await _post(client, "uh_wrong"), "failed authentication")
    async with _client(app, "2001:db8:1:3::1") as client:
        assert (await _post(client, "uh_wrong")).status_code == 401


# ---------------------------------------------------------------- websockets


async def _refused(address: str, token: str | None) -> str:
    """Open a socket, send connection_init; the close must be 4429: its reason."""
    ws = await connect(f"ws://{address}/graphql", subprotocols=[PROTOCOL], open_timeout=10)  # type: ignore[list-item]
    client = WsClient(ws)
    with pytest.raises(ConnectionClosed) as closed:
        payload = {"authorization": f"Bearer {token}"} if token else {}
        await client.send({"type": "connection_init", "payload": payload})
        await client.receive()
    with contextlib.suppress(Exception):
        await ws.close()
    assert closed.value.rcvd is not None, closed.value
    assert closed.value.rcvd.code == WS_RATE_LIMITED, closed.value.rcvd
    return closed.value.rcvd.reason


async def _closed_code(client: WsClient) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        await client.receive()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


@contextlib.asynccontextmanager
async def _server(db: Database, tmp_path: Path, **values: Any) -> AsyncIterator[str]:
    app = create_app(_settings(db, tmp_path, **values), db=db)
    async with serve_in_loop(app) as (address, _server):
        yield address


async def test_websockets_per_token_are_capped_and_freed_on_close(sqlite_db: Database, tmp_path: Path) -> None:
    tokens = await _tokens(sqlite_db)
    async with _server(sqlite_db, tmp_path, ws_max_connections_per_token=2) as address:
        first = await WsClient.open(address, tokens["admin"])
        second = await WsClient.open(address, tokens["admin"])
        reason = await _refused(address, tokens["admin"])
        assert "for this token" in reason and "Retry after" in reason
        # The other token has its own slots; the first token's sockets still work.
        other = await WsClient.open(address, tokens["other"])
        await first.send({"type": "ping"})
        assert (await first.receive())["type"] == "pong"
        # A closed socket frees its slot.
        await second.close()
        for _ in range(100):  # the server notices the close asynchronously; bounded retry, no timing assertion
            try:
                third = await WsClient.open(address, tokens["admin"])
                break
            except (ConnectionClosed, AssertionError):
                continue
        else:
            raise AssertionError("the freed slot was never reusable")
        for client in (first, third, other):
            await client.close()


@pytest.mark.parametrize("setting", ["ws_max_connections", "ws_max_connections_per_ip"])
async def test_websockets_in_total_and_per_address_are_capped_at_the_handshake(
    sqlite_db: Database, tmp_path: Path, setting: str
) -> None:
    tokens = await _tokens(sqlite_db)
    async with _server(sqlite_db, tmp_path, **{setting: 3}) as address:
        # Sockets that never authenticate hold slots too: that is what the cap is for.
        idle = [await connect(f"ws://{address}/graphql", subprotocols=[PROTOCOL]) for _ in range(2)]  # type: ignore[list-item]
        authed = await WsClient.open(address, tokens["admin"])
        reason = await _refused(address, tokens["other"])
        assert "Too many open websocket connections" in reason
        await idle[0].close()
        for _ in range(100):  # bounded: until the server has released the closed socket's slot
            try:
                again = await WsClient.open(address, tokens["other"])
                break
            except (ConnectionClosed, AssertionError):
                continue
        else:
            raise AssertionError("the freed slot was never reusable")
        for ws in (idle[1], authed.ws, again.ws):
            await ws.close()


async def test_wrong_tokens_over_websockets_block_the_address(sqlite_db: Database, tmp_path: Path) -> None:
    tokens = await _tokens(sqlite_db)
    async with _server(sqlite_db, tmp_path, auth_failures_per_ip=3) as address:
        for n in range(3):
            client = await WsClient.open(address, f"uh_guess-{n}", ack=False)
            assert await _closed_code(client) == 4403
        reason = await _refused(address, tokens["admin"])
        assert "failed authentication" in reason
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"http://{address}/graphql",
                json={"query": VIEWER},
                headers={"Authorization": f"Bearer {tokens['admin']}"},
            )
        _assert_rate_limited(response, "failed authentication")


# ---------------------------------------------------------------- Redis: one budget for every worker


@needs_redis
async def test_redis_counters_are_shared_by_two_app_instances(sqlite_db: Database, tmp_path: Path) -> None:
    tokens = await _tokens(sqlite_db)
    assert REDIS_URL is not None
    shared = {
        "redis_url": REDIS_URL,
        "rate_limit_redis_prefix": f"test-{uuid.uuid4().hex}:",
        "rate_limit_token_burst": 4,
        "rate_limit_token_per_second": NO_REFILL,
        "auth_failures_per_ip": 3,
        "ws_max_connections_per_token": 1,
    }
    async with (
        _server(sqlite_db, tmp_path, **shared) as one,
        _server(sqlite_db, tmp_path, **shared) as two,
        httpx.AsyncClient() as http,
    ):

        async def post(address: str, token: str) -> httpx.Response:
            return await http.post(
                f"http://{address}/graphql", json={"query": VIEWER}, headers={"Authorization": f"Bearer {token}"}
            )

        for address in (one, two, one, two):
            assert (await post(address, tokens["admin"])).status_code == 200
        _assert_rate_limited(await post(one, tokens["admin"]), "for this token")
        _assert_rate_limited(await post(two, tokens["admin"]), "for this token")

        # One websocket per token, across both servers.
        socket = await WsClient.open(one, tokens["other"])
        assert "for this token" in await _refused(two, tokens["other"])
        await socket.close()
        for _ in range(100):  # bounded: until server one has released the slot in Redis
            try:
                moved = await WsClient.open(two, tokens["other"])
                break
            except (ConnectionClosed, AssertionError):
                continue
        else:
            raise AssertionError("the slot released on server one was never usable on server two")
        await moved.close()

        # Wrong tokens add up over both servers.
        for address in (one, two, one):
            assert (await post(address, "uh_wrong")).status_code == 401
        _assert_rate_limited(await post(two, tokens["other"]), "failed authentication")


@pytest.mark.parametrize("failure", ["refused", "hung"])
async def test_a_failing_redis_lets_requests_through(sqlite_db: Database, tmp_path: Path, failure: str) -> None:
    """Fail open: a refused or silent Redis must not take the API down with it (nor stall every request)."""
    import asyncio

    from tests.support.net import free_port

    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts, reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0) if failure == "hung" else None
    port = server.sockets[0].getsockname()[1] if server else free_port()
    tokens = await _tokens(sqlite_db)
    app = create_app(
        _settings(
            sqlite_db,
            tmp_path,
            redis_url=f"redis://127.0.0.1:{port}/0",
            rate_limit_token_burst=1,
            rate_limit_token_per_second=NO_REFILL,
        ),
        db=sqlite_db,
    )
    try:
        async with asyncio.timeout(60), _client(app) as client:  # hang guard only
            for _ in range(5):
                assert (await _post(client, tokens["admin"])).status_code == 200
    finally:
        await app.state.uidhub.runtime.bus.close()
        for writer in held:
            writer.close()
        if server is not None:
            server.close()
            await server.wait_closed()


# ---------------------------------------------------------------- the bucket itself


async def test_a_bucket_refills_at_its_rate_and_retry_after_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """GCRA over a controlled clock: a burst of 3, one more each 0.5 s, Retry-After the time to the next one."""
    from uidhub import ratelimit

    clock = [1000.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: clock[0])
    backend = ratelimit.MemoryBackend()
    rate = ratelimit.Rate(per_second=2.0, burst=3)

    async def take(key: str = "k", peek: bool = False) -> float:
        index, wait = await backend.take([ratelimit.Take(key, rate, peek)])
        assert (index == -1) == (wait == 0.0)
        return wait

    assert [await take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await take() == pytest.approx(0.5)
    assert await take(peek=True) == pytest.approx(0.5)  # a refusal spends nothing
    clock[0] += 0.5
    assert await take() == 0.0
    assert await take() == pytest.approx(0.5)
    clock[0] += 10.0  # a full bucket again, and never more than the burst
    assert [await take() for _ in range(4)][-1] == pytest.approx(0.5)
    assert await take("other") == 0.0
    # Several buckets in one call: the first that refuses is named; those before it keep their count.
    index, wait = await backend.take([ratelimit.Take("fresh", rate), ratelimit.Take("k", rate)])
    assert index == 1 and wait == pytest.approx(0.5)
    assert [await take("fresh") for _ in range(3)][-1] == pytest.approx(0.5)

"""The real server: uvicorn on a loopback port, a real websocket client, health checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.api import make_partner, make_token
from tests.support.net import free_port
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.settings import Settings


class Served:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.ws = base.replace("http://", "ws://") + "/graphql"
        self.token = token


async def serve(app: object) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(200):  # bounded: at most 10 s
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture
async def served(sqlite_db: Database, tmp_path: Path) -> AsyncIterator[Served]:
    partner = await make_partner(sqlite_db, "P-MAIN")
    token = await make_token(sqlite_db, partner)
    app = create_app(Settings(database_url=sqlite_db.url, export_dir=str(tmp_path / "exports")), db=sqlite_db)
    async for base in serve(app):
        yield Served(base, token)


async def ws_init(url: str, payload: dict | None) -> tuple[dict | None, int | None]:
    """Send connection_init; return (first message, close code)."""
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"], open_timeout=10) as ws:
        assert ws.subprotocol == "graphql-transport-ws"
        message: dict = {"type": "connection_init"}
        if payload is not None:
            message["payload"] = payload
        await ws.send(json.dumps(message))
        try:
            reply = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        except ConnectionClosed as closed:
            return None, closed.rcvd.code if closed.rcvd else None
        return reply, None


async def test_websocket_auth(served: Served) -> None:
    reply, code = await ws_init(served.ws, {"authorization": "Bearer not-a-token"})
    assert reply is None and code == 4403
    reply, code = await ws_init(served.ws, None)
    assert reply is None and code == 4403
    reply, code = await ws_init(served.ws, {"authorization": served.token})  # no "Bearer"
    assert reply is None and code == 4403
    reply, code = await ws_init(served.ws, {"authorization": f"Bearer {served.token}"})
    assert code is None and reply is not None and reply["type"] == "connection_ack"


async def test_websocket_protocol(served: Served) -> None:
    # The legacy graphql-ws subprotocol is refused.
    with pytest.raises((InvalidStatus, ConnectionClosed, AssertionError)):
        async with websockets.connect(served.ws, subprotocols=["graphql-ws"], open_timeout=10) as ws:
            assert ws.subprotocol == "graphql-ws"
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            await asyncio.wait_for(ws.recv(), timeout=10)
    # A second connection_init is a protocol violation (4429).
    async with websockets.connect(served.ws, subprotocols=["graphql-transport-ws"], open_timeout=10) as ws:
        init = json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {served.token}"}})
        await ws.send(init)
        assert json.loads(await asyncio.wait_for(ws.recv(), timeout=10))["type"] == "connection_ack"
        await ws.send(init)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429


async def test_http_over_real_server(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        response = await client.post(
            "/graphql", json={"query": "{ viewer { method } }"}, headers={"Authorization": f"Bearer {served.token}"}
        )
        assert response.status_code == 200 and response.json()["data"]["viewer"]["method"] == "PLATFORM"
        response = await client.post("/graphql", json={"query": "{ viewer { method } }"})
        assert response.status_code == 401
        response = await client.post("/graphql", content=b"{", headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        response = await client.post("/graphql", content=b"x" * 1_100_000, headers={"Content-Type": "application/json"})
        assert response.status_code == 413


async def test_readyz_503_when_database_unreachable(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"  # nothing listens there
    app = create_app(Settings(database_url=url, export_dir=str(tmp_path / "exports")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        # GraphQL without the database: no traceback, no 200 with data.
        response = await client.post(
            "/graphql", json={"query": "{ viewer { method } }"}, headers={"Authorization": "Bearer x"}
        )
        assert response.status_code == 503
        assert response.json()["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        assert "Traceback" not in response.text and "refused" not in response.text
    await app.state.uidhub.runtime.db.dispose()

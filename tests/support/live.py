"""Helpers for the live-subscription tests and bench: real servers, a real websocket client, breaches.

Servers are uvicorn on a loopback port: in this event loop (`serve_in_loop`,
so a test can count the server's asyncio tasks) or in a subprocess
(`ServerProcess`, for two workers sharing a database and Redis). The client
is the `websockets` package speaking graphql-transport-ws.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from tests.support.accounts import LINK
from tests.support.net import free_port
from uidhub.db import Database
from uidhub.models import AlertEvent, Partner
from uidhub.models.enums import AlertKind, AlertState
from uidhub.notifications.log import add_alert

PROTOCOL = "graphql-transport-ws"
ROOT = Path(__file__).resolve().parents[2]

BREACHES = """subscription($afterId: ID) {
  quotaThresholdBreached(afterId: $afterId) { id kind state available threshold occurredAt account { uid } }
}"""
ACCOUNT_EVENTS = """subscription($uids: [String!], $afterId: ID) {
  accountEvents(uids: $uids, afterId: $afterId) { id action account { uid } }
}"""


# ---------------------------------------------------------------- servers


@contextlib.asynccontextmanager
async def serve_in_loop(app: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Run uvicorn inside the current event loop on a free loopback port; yields (host:port, server)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, loop="asyncio", lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn-under-test")
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


class ServerProcess:
    """`uvicorn uidhub.asgi:app` in a subprocess with the given UIDHUB_* environment."""

    def __init__(self, env: dict[str, str], *, workers: int = 1, port: int | None = None) -> None:
        # A given port lets a test restart the server where its clients expect it.
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("UIDHUB_")}
        full_env.update(env)
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "uidhub.asgi:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--loop",
            "asyncio",
            "--log-level",
            "warning",
        ]
        if workers > 1:
            command += ["--workers", str(workers)]
        self.process = subprocess.Popen(command, cwd=ROOT, env=full_env)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://{self.address}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise TimeoutError("server did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


# ---------------------------------------------------------------- client


class WsClient:
    """A graphql-transport-ws client over the `websockets` package."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, address: str, token: str | None, *, ack: bool = True) -> WsClient:
        ws = await connect(f"ws://{address}/graphql", subprotocols=[PROTOCOL], open_timeout=10, max_queue=None)  # type: ignore[list-item]
        client = cls(ws)
        payload = {"authorization": f"Bearer {token}"} if token is not None else {}
        await client.send({"type": "connection_init", "payload": payload})
        if ack:
            message = await client.receive()
            assert message["type"] == "connection_ack", message
        return client

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next protocol message, answering pings on the way."""
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            message = json.loads(raw)
            if message.get("type") == "ping":
                await self.send({"type": "pong"})
                continue
            return message

    async def subscribe(self, op_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        await self.send({"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}})

    async def next_data(self, timeout: float = 10.0) -> dict[str, Any]:
        message = await self.receive(timeout)
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        return message["payload"]["data"]

    async def nothing_for(self, seconds: float) -> None:
        """Assert that no protocol message arrives within `seconds`."""
        with contextlib.suppress(TimeoutError):
            message = await self.receive(seconds)
            raise AssertionError(f"unexpected message {message}")

    async def complete(self, op_id: str) -> None:
        await self.send({"id": op_id, "type": "complete"})

    async def close(self) -> None:
        await self.ws.close()


# ---------------------------------------------------------------- writes


async def gql(address: str, token: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"http://{address}/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {token}"},
        )
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


async def latest_ids(address: str, token: str) -> dict[str, str]:
    """afterId values that start a subscription exactly at the newest stored row (no race with its first read)."""
    from uidhub.schema.common import to_global_id

    data = await gql(
        address,
        token,
        "{ alertEvents(first: 1) { edges { node { id } } } auditEntries(first: 1) { edges { node { id } } } }",
    )
    alerts = data["alertEvents"]["edges"]
    audit = data["auditEntries"]["edges"]
    return {
        "alerts": alerts[0]["node"]["id"] if alerts else to_global_id("QuotaAlertEvent", 0),
        "audit": audit[0]["node"]["id"] if audit else to_global_id("AuditEntry", 0),
    }


async def link_over_http(address: str, token: str, uid: str, amount: str = "100.00") -> None:
    """Link an account through a running server's HTTP API (writes LINK audit entries)."""
    data = await gql(address, token, LINK, {"input": {"uid": uid, "quotaAmount": amount}})
    assert data["linkAccount"]["userErrors"] == [], data


async def store_breach(
    db: Database,
    partner_id: int,
    account_id: int,
    pool_id: int,
    *,
    kind: AlertKind = AlertKind.QUOTA_WARNING,
    state: AlertState = AlertState.BREACHED,
) -> int:
    """Append one alert event through the log's own commit path (add_alert + Database.write); its id."""
    event = AlertEvent(
        partner_id=partner_id,
        account_id=account_id,
        pool_id=pool_id,
        kind=kind,
        state=state,
        available_cents=4_000,
        threshold_cents=5_000,
    )
    async with db.write() as session:
        add_alert(session, event, None)
    return event.id


async def account_ids(db: Database, uid: str) -> tuple[int, int, int]:
    """(partner_id, account_id, pool_id) of an account."""
    from sqlalchemy import select

    from uidhub.models import Account

    async with db.read() as session:
        account = await session.scalar(select(Account).where(Account.uid == uid))
        assert account is not None
        return account.partner_id, account.id, account.pool_id


async def partner_id(db: Database, uid: str) -> int:
    from sqlalchemy import select

    async with db.read() as session:
        value = await session.scalar(select(Partner.id).where(Partner.uid == uid))
        assert value is not None
        return int(value)

"""Websocket subscribers that stop reading never hold a database connection (issue 17, item 3).

A real uvicorn server runs in the test's loop over PostgreSQL with a small
pool. Thirty raw websocket clients (plain sockets with a tiny receive buffer,
speaking graphql-transport-ws by hand so that nothing reads for them) replay
a backlog of large events and then stop reading: the server's sends block
once the socket buffers are full. While they are blocked, ordinary HTTP
requests must still be answered and PostgreSQL must show no connection of
the app's database "idle in transaction".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.api import make_partner, make_token
from tests.support.live import PROTOCOL, account_ids, gql, link_over_http, serve_in_loop, store_breach
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.models import Account
from uidhub.models.enums import Role
from uidhub.schema.common import to_global_id
from uidhub.settings import Settings

SUBSCRIBERS = 30
POOL_SIZE = 5
EVENTS = 60
ALIASES = 50
REMARKS_BYTES = 2_000
#: Hang guards (waits, not speed assertions): generous for a loaded 2-core machine.
STALL_GUARD = 90.0
REQUEST_GUARD = 20.0
#: A connection idle in a transaction for this long is held, not between two statements.
HELD = 1.0

#: Each event renders ALIASES copies of the account's remarks: about 100 kB of JSON per message.
HEAVY_BREACHES = (
    "subscription($afterId: ID) { quotaThresholdBreached(afterId: $afterId) { id "
    + " ".join(f"a{i}: account {{ remarks }}" for i in range(ALIASES))
    + " } }"
)


class RawSubscriber:
    """A graphql-transport-ws client on a bare socket that reads only what the handshake needs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, address: str, token: str) -> RawSubscriber:
        host, port = address.split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A tiny receive window: the server's socket buffer fills after a few kilobytes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /graphql HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        client = cls(reader, writer)
        await client.send({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        ack = await client.receive()
        assert ack["type"] == "connection_ack", ack
        return client

    async def send(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if len(payload) < 126:
            header = struct.pack("!BB", 0x81, 0x80 | len(payload))
        else:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def receive(self) -> dict[str, Any]:
        """One unfragmented text frame from the server."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 10)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        assert first & 0x0F == 0x1, first
        return json.loads(await self.reader.readexactly(length))

    def abort(self) -> None:
        self.writer.transport.abort()


def stalled_connections(server: Any) -> int:
    """Server connections whose outgoing data no longer fits the socket: asyncio buffers it (a blocked send)."""
    count = 0
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None and not transport.is_closing() and transport.get_write_buffer_size() > 0:
            count += 1
    return count


async def wait_stalled(server: Any, at_least: int) -> None:
    async with asyncio.timeout(STALL_GUARD):
        for _ in itertools.count():
            if stalled_connections(server) >= at_least:
                return
            await asyncio.sleep(0.1)  # transport buffers have no event to wait on


async def idle_in_transaction(admin: Any, database: str) -> list[str]:
    """The last statements of the database's connections idle in a transaction for over HELD seconds.

    A connection between two statements of a running request is briefly idle
    in a transaction too; only one left there is held.
    """
    async with admin.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT query FROM pg_stat_activity WHERE datname = :db AND state LIKE 'idle in transaction%' "
                "AND state_change < now() - make_interval(secs => :held)"
            ),
            {"db": database, "held": HELD},
        )
        return [row.query for row in rows]


@pytest.fixture
async def small_pool_db(pg_db: Database) -> AsyncIterator[Database]:
    """The test's PostgreSQL database (emptied by `pg_db`) behind a pool of POOL_SIZE connections, no overflow."""
    engine = create_async_engine(pg_db.url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=60, pool_pre_ping=True)
    database = Database(pg_db.url, engine=engine)
    try:
        yield database
    finally:
        await database.dispose()


async def test_stalled_subscribers_hold_no_session_and_requests_are_answered(
    small_pool_db: Database, pg_db: Database, tmp_path: Path
) -> None:
    db = small_pool_db
    # 30 sockets of one token from one address: above the default per-token websocket cap (20).
    settings = Settings(
        database_url=db.url, export_dir=str(tmp_path / "exports"), ws_max_connections_per_token=SUBSCRIBERS + 5
    )
    app = create_app(settings, db=db)
    partner = await make_partner(db, "P-MAIN")
    token = await make_token(db, partner, Role.ADMIN)
    name = make_url(db.url).database
    async with serve_in_loop(app) as (address, server):
        await link_over_http(address, token, "U-STALL")
        partner_id, account_id, pool_id = await account_ids(db, "U-STALL")
        async with db.write() as session:
            remarks = os.urandom(REMARKS_BYTES // 2).hex()  # incompressible, in case compression is negotiated
            await session.execute(update(Account).where(Account.id == account_id).values(remarks=remarks))
        for _ in range(EVENTS):
            await store_breach(db, partner_id, account_id, pool_id)

        clients: list[RawSubscriber] = []
        try:
            for _ in range(SUBSCRIBERS):
                clients.append(await RawSubscriber.open(address, token))
            for client in clients:
                # Replay the whole backlog, and never read it.
                await client.send(
                    {
                        "id": "1",
                        "type": "subscribe",
                        "payload": {
                            "query": HEAVY_BREACHES,
                            "variables": {"afterId": to_global_id("QuotaAlertEvent", 0)},
                        },
                    }
                )

            # As many blocked senders as the pool has connections: on the old code they held all of them,
            # and this request waited for the pool.
            await wait_stalled(server, POOL_SIZE)
            async with asyncio.timeout(REQUEST_GUARD):
                data = await gql(address, token, '{ endUser(uid: "U-STALL") { uid } }')
            assert data["endUser"]["uid"] == "U-STALL"

            # Every subscriber blocked on its socket: no transaction stays open, requests are still served.
            await wait_stalled(server, SUBSCRIBERS)
            await asyncio.sleep(HELD)  # what is still open now has been held at least this long
            assert await idle_in_transaction(pg_db.engine, name) == []
            async with asyncio.timeout(REQUEST_GUARD):
                for _ in range(3):
                    data = await gql(address, token, '{ endUser(uid: "U-STALL") { uid } }')
                    assert data["endUser"]["uid"] == "U-STALL"
            async with asyncio.timeout(REQUEST_GUARD):
                async with httpx.AsyncClient() as http:
                    assert (await http.get(f"http://{address}/readyz")).status_code == 200
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    client.abort()

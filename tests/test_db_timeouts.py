"""A hung database does not hang the server (issue 17, item 5).

The app talks to PostgreSQL through a TCP proxy of the test's own that stops
forwarding on command: connections stay open and packets vanish, as when a
database host hangs or the network partitions. `/readyz` must then answer 503
within a second, and a request must end with a coded error within the
statement and connect timeouts instead of waiting for the outage to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.api import make_partner, make_token
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.models.enums import Role
from uidhub.settings import Settings

#: The bound the issue sets for "/readyz says not ready" (a hang guard, measured around the whole request).
READYZ_BOUND = 1.0
STATEMENT_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0
#: Hang guard for a request while the database hangs: the timeouts above plus slack for a loaded machine.
REQUEST_GUARD = 20.0


class FreezingProxy:
    """A loopback TCP proxy to PostgreSQL that, once frozen, accepts and holds traffic without forwarding any."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self.flowing.wait()  # frozen: the client's connect hangs after the TCP handshake
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.add(up_writer)
        for source, target in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await source.read(65536):
                await self.flowing.wait()  # frozen: what arrives is held, never delivered
                target.write(chunk)
                await target.drain()
        target.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def proxy(pg_db: Database) -> AsyncIterator[FreezingProxy]:
    url = make_url(pg_db.url)
    server = FreezingProxy(url.host or "127.0.0.1", url.port or 5432)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def readyz(client: httpx.AsyncClient) -> tuple[int, float]:
    started = time.monotonic()
    response = await client.get("/readyz")
    return response.status_code, time.monotonic() - started


async def test_a_hung_database_makes_readyz_not_ready_and_requests_fail_with_a_code(
    pg_db: Database, proxy: FreezingProxy, tmp_path: Path
) -> None:
    partner = await make_partner(pg_db, "P-MAIN")
    token = await make_token(pg_db, partner, Role.ADMIN)
    via_proxy = make_url(pg_db.url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = Settings(
        database_url=via_proxy,
        export_dir=str(tmp_path / "exports"),
        db_statement_timeout_seconds=STATEMENT_TIMEOUT,
        db_connect_timeout_seconds=CONNECT_TIMEOUT,
    )
    app = create_app(settings)
    db: Database = app.state.uidhub.runtime.db
    headers = {"Authorization": f"Bearer {token}"}
    query = {"query": "{ viewer { partner { uid } } }"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            assert (await readyz(client))[0] == 200
            body = (await client.post("/graphql", json=query, headers=headers)).json()
            assert body["data"]["viewer"]["partner"]["uid"] == "P-MAIN", body

            proxy.freeze()
            for _ in range(3):  # the first probe, and later ones while the first ping is still stuck
                async with asyncio.timeout(READYZ_BOUND * 5):  # a hang guard; the bound is asserted below
                    status, took = await readyz(client)
                assert status == 503
                assert took < READYZ_BOUND, f"/readyz took {took:.2f}s"

            # A pooled connection that stopped answering, then a new connection that never completes its
            # handshake: both end with the coded 503, bounded by the statement and connect timeouts.
            for _ in range(2):
                async with asyncio.timeout(REQUEST_GUARD):
                    response = await client.post("/graphql", json=query, headers=headers)
                assert response.status_code == 503
                assert response.json()["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"

            proxy.thaw()
            async with asyncio.timeout(REQUEST_GUARD):
                for _ in range(1000):  # ready again once the stuck ping has timed out
                    if (await readyz(client))[0] == 200:
                        break
                    await asyncio.sleep(0.2)
            body = (await client.post("/graphql", json=query, headers=headers)).json()
            assert body["data"]["viewer"]["partner"]["uid"] == "P-MAIN", body
    finally:
        await proxy.close()  # connections stuck in the proxy end, so disposing the pool cannot hang
        async with asyncio.timeout(REQUEST_GUARD):
            await db.dispose()


def test_postgres_connections_carry_the_configured_timeouts() -> None:
    """The settings reach asyncpg: a server-side statement_timeout, a client-side command and connect timeout."""
    from uidhub.db import postgres_connect_args

    args = postgres_connect_args(2.5, 4.0)
    assert args["server_settings"]["statement_timeout"] == "2500"
    assert args["timeout"] == 4.0
    assert args["command_timeout"] > 2.5

"""Benchmark: `recordConsumption` over HTTP vs a plain Starlette route running the same atomic UPDATE.

For SQLite (a temp file) and PostgreSQL (a temporary database, when a URL is given), in one run:
serves (1) the uidhub app and (2) a bare Starlette route that runs
`UPDATE quota_pools SET undeducted_cents = undeducted_cents + :d WHERE id = :id RETURNING …` in its own
write transaction, each with uvicorn on a loopback port in its own process, and sends the same number of
requests to each from the same client with the same concurrency. Prints requests/s of both, the ratio,
the pool's final sum (it must be exact), and the SQL statements one recordConsumption runs (counted with
an engine event, in-process, BEGIN/COMMIT not counted).

    .venv/bin/python bench/bench_consumption.py [--requests 400] [--concurrency 8]
        [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url

from tests.support.net import free_port
from uidhub.db import Database
from uidhub.migrate import upgrade
from uidhub.models import Partner, QuotaPool
from uidhub.models.enums import AccountType, OperationMethod, PartnerKind, Role
from uidhub.resolvers import accounts
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.auth import create_token

RECORD = (
    "mutation($i: AmountInput!) { recordConsumption(input: $i) "
    "{ quota { consumedUndeducted available } userErrors { code } } }"
)
PLAIN_SQL = text(
    "UPDATE quota_pools SET undeducted_cents = undeducted_cents + :d WHERE id = :id "
    "RETURNING amount_cents, deducted_cents, undeducted_cents"
)


# ---------------------------------------------------------------- data


async def load(url: str) -> tuple[str, int]:
    """A partner, an ADMIN token and account U1 with a quota; returns (token, pool id)."""
    await upgrade(url)
    db = Database(url)
    try:
        async with db.write() as session:
            partner = Partner(uid="BENCH", name="Bench", kind=PartnerKind.DISTRIBUTOR, alert_emails=[])
            session.add(partner)
            await session.flush()
            token = await create_token(session, partner=partner, role=Role.ADMIN)
            actor = Actor(
                partner_id=partner.id,
                partner_uid="BENCH",
                partner_kind=PartnerKind.DISTRIBUTOR,
                role=Role.ADMIN,
                method=OperationMethod.PLATFORM,
                operator_uid="BENCH",
                operator_name="Bench",
                is_ram=False,
            )
            account = await accounts.link_account(
                session,
                actor,
                uid="U1",
                account_type=AccountType.END_USER,
                nickname=None,
                email=None,
                master_uid=None,
                quota_amount_cents=1_000_000_00,
            )
            return token, account.pool_id
    finally:
        await db.dispose()


async def undeducted(url: str, pool_id: int) -> int:
    db = Database(url)
    try:
        async with db.read() as session:
            return int(await session.scalar(select(QuotaPool.undeducted_cents).where(QuotaPool.id == pool_id)) or 0)
    finally:
        await db.dispose()


# ---------------------------------------------------------------- servers (child processes)


def plain_app(url: str, pool_id: int):  # type: ignore[no-untyped-def]
    """The baseline: one write transaction with the same atomic UPDATE … RETURNING, JSON out."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    db = Database(url)

    async def consume(request: Request) -> JSONResponse:
        body = await request.json()
        async with db.session(write=True) as session:
            row = (await session.execute(PLAIN_SQL, {"d": int(body["cents"]), "id": pool_id})).one()
            await session.commit()
        amount, deducted, undeducted_ = row
        return JSONResponse({"undeducted": undeducted_, "available": amount - deducted - undeducted_})

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse("ok")

    return Starlette(routes=[Route("/consume", consume, methods=["POST"]), Route("/healthz", healthz)])


def run_server(kind: str, url: str, port: int, pool_id: int) -> None:
    import logging

    import uvicorn

    logging.disable(logging.WARNING)
    if kind == "graphql":
        from uidhub.app import create_app
        from uidhub.settings import Settings

        app = create_app(Settings(database_url=url, export_dir=tempfile.mkdtemp(), redis_url=None))
    else:
        app = plain_app(url, pool_id)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


# ---------------------------------------------------------------- client


async def wait_up(base: str) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(300):  # bounded: about 30 s
            try:
                if (await client.get(base + "/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"server at {base} did not come up")


async def measure(name: str, send: Any, requests: int, concurrency: int) -> float:
    for i in range(5):  # warm-up
        await send(f"warm-{i}")
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:  # bounded: `requests` in total over all workers
            await send(f"run-{i}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    rate = requests / elapsed
    print(f"  {name:<44} {requests} requests in {elapsed:6.2f} s = {rate:8.1f} req/s")
    return rate


async def bench(url: str, token: str, pool_id: int, requests: int, concurrency: int) -> None:
    gql_port, plain_port = free_port(), free_port()
    ctx = multiprocessing.get_context("spawn")
    servers = [
        ctx.Process(target=run_server, args=("graphql", url, gql_port, pool_id), daemon=True),
        ctx.Process(target=run_server, args=("plain", url, plain_port, pool_id), daemon=True),
    ]
    for process in servers:
        process.start()
    try:
        gql_base, plain_base = f"http://127.0.0.1:{gql_port}", f"http://127.0.0.1:{plain_port}"
        await wait_up(gql_base)
        await wait_up(plain_base)
        headers = {"Authorization": f"Bearer {token}"}
        run = uuid.uuid4().hex[:8]
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:

            async def gql(key: str) -> None:
                variables = {"i": {"uid": "U1", "amount": "0.01", "idempotencyKey": f"{run}-{key}"}}
                response = await client.post(
                    gql_base + "/graphql", json={"query": RECORD, "variables": variables}, headers=headers
                )
                body = response.json()
                assert response.status_code == 200 and body["data"]["recordConsumption"]["userErrors"] == [], body

            async def plain(_key: str) -> None:
                response = await client.post(plain_base + "/consume", json={"cents": 1})
                assert response.status_code == 200

            before = await undeducted(url, pool_id)
            plain_rate = await measure("plain Starlette route, same atomic UPDATE", plain, requests, concurrency)
            gql_rate = await measure("GraphQL recordConsumption (idempotent)", gql, requests, concurrency)
            after = await undeducted(url, pool_id)
            expected = 2 * (requests + 5)
            print(
                f"  ratio GraphQL / plain: {gql_rate / plain_rate:.3f} ({plain_rate / gql_rate:.1f}x slower); "
                f"pool moved by {after - before} cents, expected {expected}: "
                f"{'exact' if after - before == expected else 'MISMATCH'}"
            )
            if after - before != expected:
                raise SystemExit("lost or duplicated update")
    finally:
        for process in servers:
            process.terminate()
            process.join(10)


async def count_statements(url: str, token: str) -> None:
    """SQL statements of one recordConsumption request, in-process over the real app."""
    from uidhub.app import create_app
    from uidhub.settings import Settings

    db = Database(url)
    statements: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")):
            statements.append(" ".join(statement.split())[:90])

    app = create_app(Settings(database_url=url, export_dir=tempfile.mkdtemp(), redis_url=None), db=db)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            headers = {"Authorization": f"Bearer {token}"}

            async def send(key: str) -> None:
                variables = {"i": {"uid": "U1", "amount": "0.01", "idempotencyKey": key}}
                body = (
                    await client.post("/graphql", json={"query": RECORD, "variables": variables}, headers=headers)
                ).json()
                assert body["data"]["recordConsumption"]["userErrors"] == [], body

            await send(f"count-warm-{uuid.uuid4().hex}")
            event.listen(db.engine.sync_engine, "before_cursor_execute", on_execute)
            rounds = 20
            for i in range(rounds):
                await send(f"count-{i}-{uuid.uuid4().hex}")
            event.remove(db.engine.sync_engine, "before_cursor_execute", on_execute)
            per_request = len(statements) / rounds
            print(
                f"  SQL statements per recordConsumption request: {per_request:.1f} "
                "(the token is cached after the warm-up: UIDHUB_TOKEN_CACHE_SECONDS; BEGIN/COMMIT not counted)"
            )
            for statement in statements[: int(per_request)]:
                print(f"    {statement}")
            statements.clear()
            await send("count-repeat")
            event.listen(db.engine.sync_engine, "before_cursor_execute", on_execute)
            await send("count-repeat")
            event.remove(db.engine.sync_engine, "before_cursor_execute", on_execute)
            print(f"  SQL statements of an idempotent repeat: {len(statements)}")
    finally:
        await db.dispose()


# ---------------------------------------------------------------- main


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(
        user=u.username or "postgres",
        password=u.password,
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        database="postgres",
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run_one(label: str, url: str, requests: int, concurrency: int) -> None:
    print(f"{label}: {requests} requests each, concurrency {concurrency}")
    token, pool_id = asyncio.run(load(url))
    asyncio.run(count_statements(url, token))
    asyncio.run(bench(url, token, pool_id, requests, concurrency))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("UIDHUB_BENCH_POSTGRES_URL"),
        help="a PostgreSQL server URL; a temporary database is created there and dropped after",
    )
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        raise SystemExit("--requests 1..100000, --concurrency 1..256")
    with tempfile.TemporaryDirectory() as tmp:
        run_one("SQLite", f"sqlite+aiosqlite:///{tmp}/bench.db", args.requests, args.concurrency)
    if args.postgres_url:
        name = f"uidhub_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(_pg_admin(args.postgres_url, f'CREATE DATABASE "{name}"'))
        try:
            url = make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False)
            run_one("PostgreSQL", url, args.requests, args.concurrency)
        finally:
            asyncio.run(_pg_admin(args.postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        print("PostgreSQL skipped: pass --postgres-url or set UIDHUB_BENCH_POSTGRES_URL")


if __name__ == "__main__":
    main()

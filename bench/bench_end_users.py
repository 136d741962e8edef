"""Benchmark: `endUsers(first: 100)` with nested fields vs a plain Starlette JSON route, both under uvicorn.

Loads 10,000 accounts (masters with sub-accounts, audit rows) into a fresh database, then serves
(1) the uidhub app and (2) a bare Starlette route that returns the same 100 rows as JSON through
SQLAlchemy Core, each with uvicorn on a loopback port in its own process, and measures requests/s
of each with the same client in the same run. The ratio is the figure.

    .venv/bin/python bench/bench_end_users.py [--requests 200] [--concurrency 4] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import insert, select

from tests.support.net import free_port
from uidhub.db import Database
from uidhub.migrate import upgrade
from uidhub.models import Account, AuditEntry, Partner, QuotaPool
from uidhub.models.enums import AccountStatus, AccountType, AuditAction, OperationMethod, PartnerKind, Role
from uidhub.resolvers.auth import create_token

ACCOUNTS = 10_000
GRAPHQL = """{ endUsers(first: 100) { totalCount edges { cursor node {
  uid nickname accountStatus linkedAt businessManager
  partner { uid }
  master { uid }
  subAccounts { uid }
  policy { effectivePaygFreezeStatus shutdownPolicy creditControlStatus }
  quota { amount available }
  auditEntries(first: 3) { edges { node { action occurredAt operator { uid } } } }
} } pageInfo { hasNextPage endCursor } } }"""


# ---------------------------------------------------------------- data


async def load(url: str) -> str:
    await upgrade(url)
    db = Database(url)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    try:
        async with db.write() as session:
            partner = Partner(uid="BENCH", name="Bench Distributor", kind=PartnerKind.DISTRIBUTOR, alert_emails=[])
            session.add(partner)
            await session.flush()
            token = await create_token(session, partner=partner, role=Role.ADMIN)
            pid = partner.id
        masters = ACCOUNTS * 2 // 5  # 4,000 masters, 6,000 sub-accounts
        async with db.write() as session:
            await session.execute(
                insert(QuotaPool),
                [
                    {
                        "id": i + 1,
                        "partner_id": pid,
                        "amount_cents": 100_000 + i,
                        "deducted_cents": 0,
                        "undeducted_cents": i % 700,
                    }
                    for i in range(masters)
                ],
            )
            rows = []
            for i in range(masters):
                rows.append(
                    {
                        "id": i + 1,
                        "partner_id": pid,
                        "uid": f"1{i:015d}",
                        "account_type": AccountType.ENTERPRISE,
                        "nickname": f"Master {i} 杭州云帆",
                        "business_manager": "Li Wei",
                        "status": AccountStatus.NORMAL,
                        "pool_id": i + 1,
                        "master_id": None,
                        "linked_at": t0 + timedelta(seconds=i * 10),
                    }
                )
            for j in range(ACCOUNTS - masters):
                m = j % masters
                rows.append(
                    {
                        "id": masters + j + 1,
                        "partner_id": pid,
                        "uid": f"2{j:015d}",
                        "account_type": AccountType.END_USER,
                        "nickname": f"Sub {j}",
                        "business_manager": None,
                        "status": AccountStatus.NORMAL,
                        "pool_id": m + 1,
                        "master_id": m + 1,
                        "linked_at": t0 + timedelta(seconds=m * 10 + 1 + j // masters),
                    }
                )
            await session.execute(insert(Account), rows)
            await session.execute(
                insert(AuditEntry),
                [
                    {
                        "partner_id": pid,
                        "account_id": r["id"],
                        "action": AuditAction.ACCOUNT_LINKED,
                        "method": OperationMethod.PLATFORM,
                        "operator_uid": "BENCH",
                        "operator_name": "bench",
                        "operator_is_ram": False,
                        "operator_role": Role.ADMIN,
                        "before": None,
                        "after": {"uid": r["uid"]},
                        "occurred_at": r["linked_at"],
                    }
                    for r in rows
                ],
            )
        return token
    finally:
        await db.dispose()


# ---------------------------------------------------------------- servers (child processes)


def plain_app(url: str):  # type: ignore[no-untyped-def]
    """The baseline: the same first page (LINKED_AT desc, UID desc), Core rows as JSON."""
    from sqlalchemy.orm import aliased
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    db = Database(url)
    master = aliased(Account.__table__)
    a, p, pt = Account.__table__, QuotaPool.__table__, Partner.__table__
    query = (
        select(
            a.c.uid,
            a.c.nickname,
            a.c.status,
            a.c.linked_at,
            a.c.business_manager,
            pt.c.uid.label("partner"),
            master.c.uid.label("master"),
            p.c.amount_cents,
            p.c.deducted_cents,
            p.c.undeducted_cents,
            p.c.shutdown_policy,
            p.c.credit_control_status,
        )
        .join(p, p.c.id == a.c.pool_id)
        .join(pt, pt.c.id == a.c.partner_id)
        .outerjoin(master, master.c.id == a.c.master_id)
        .where(a.c.status != "DELETED")
        .order_by(a.c.linked_at.desc(), a.c.uid.desc())
        .limit(100)
    )

    async def end_users(_request):  # type: ignore[no-untyped-def]
        async with db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return JSONResponse([{**r, "linked_at": r["linked_at"].isoformat()} for r in rows])

    return Starlette(routes=[Route("/end-users", end_users)])


def run_server(kind: str, url: str, port: int) -> None:
    import logging

    import uvicorn

    logging.disable(logging.WARNING)
    if kind == "graphql":
        from uidhub.app import create_app
        from uidhub.settings import Settings

        app = create_app(Settings(database_url=url, export_dir=tempfile.mkdtemp()))
    else:
        app = plain_app(url)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


# ---------------------------------------------------------------- client


async def wait_up(base: str) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(200):  # bounded: about 20 s
            try:
                await client.get(base + "/healthz")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise SystemExit(f"server at {base} did not come up")


async def measure(name: str, send, requests: int, concurrency: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(5):  # warm-up
        await send()
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    rate = requests / elapsed
    print(f"{name:<40} {requests} requests in {elapsed:6.2f} s = {rate:8.1f} req/s")
    return rate


async def bench(url: str, token: str, requests: int, concurrency: int) -> None:
    gql_port, plain_port = free_port(), free_port()
    ctx = multiprocessing.get_context("spawn")
    servers = [
        ctx.Process(target=run_server, args=("graphql", url, gql_port), daemon=True),
        ctx.Process(target=run_server, args=("plain", url, plain_port), daemon=True),
    ]
    for process in servers:
        process.start()
    try:
        gql_base, plain_base = f"http://127.0.0.1:{gql_port}", f"http://127.0.0.1:{plain_port}"
        await wait_up(gql_base)
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
            for _ in range(200):
                try:
                    await client.get(plain_base + "/end-users")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            headers = {"Authorization": f"Bearer {token}"}
            body = (await client.post(gql_base + "/graphql", json={"query": GRAPHQL}, headers=headers)).json()
            assert "errors" not in body, body
            edges = body["data"]["endUsers"]["edges"]
            plain_rows = (await client.get(plain_base + "/end-users")).json()
            assert body["data"]["endUsers"]["totalCount"] == ACCOUNTS
            assert [e["node"]["uid"] for e in edges] == [r["uid"] for r in plain_rows], "same 100 rows"

            async def gql() -> None:
                response = await client.post(gql_base + "/graphql", json={"query": GRAPHQL}, headers=headers)
                assert response.status_code == 200

            async def plain() -> None:
                response = await client.get(plain_base + "/end-users")
                assert response.status_code == 200

            print(
                f"{ACCOUNTS} accounts, {len(json.dumps(body))} bytes GraphQL / "
                f"{len(json.dumps(plain_rows))} bytes plain per response, concurrency {concurrency}"
            )
            plain_rate = await measure("plain Starlette + SQLAlchemy Core", plain, requests, concurrency)
            gql_rate = await measure("GraphQL endUsers(first: 100) nested", gql, requests, concurrency)
            print(f"ratio GraphQL / plain: {gql_rate / plain_rate:.3f} ({plain_rate / gql_rate:.1f}x slower)")
    finally:
        for process in servers:
            process.terminate()
            process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--database-url", help="an EMPTY database (default: a new SQLite file in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, token = load_timed(args.database_url, tmp)
        asyncio.run(bench(url, token, args.requests, args.concurrency))


def load_timed(database_url: str | None, tmp: str) -> tuple[str, str]:
    """Load the accounts into `database_url` (an empty database) or a new SQLite file in `tmp`: (url, token)."""
    url = database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
    started = time.perf_counter()
    token = asyncio.run(load(url))
    print(f"loaded {ACCOUNTS} accounts in {time.perf_counter() - started:.1f} s ({url.split(':')[0]})")
    return url, token


if __name__ == "__main__":
    main()

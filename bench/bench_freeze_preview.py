"""Benchmark: the freezePayg preview (confirm: false) on 1,000 masters × 10 sub-accounts.

Loads 1,000 masters with 10 sub-accounts each (11,000 accounts) and two
instances per account (one PAYG, one SUBSCRIPTION: 22,000 instances) into a
fresh database, then times, in the same run:

- preview: `resolvers.policy.change_freeze(confirm=False)` over one master,
  and over 100 masters at once (the bulk limit: 1,100 affected accounts);
- through GraphQL: the `freezePayg(confirm: false)` mutation over one master
  and over 100 masters, in-process over the ASGI app;
- baseline: plain SQL that reads the same rows (the named accounts, their
  masters and their sub-accounts) and counts the same PAYG instances.

The ratios preview/baseline are the figures.

    .venv/bin/python bench/bench_freeze_preview.py [--repeat 20] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import func, insert, or_, select, text

from uidhub.db import Database
from uidhub.migrate import upgrade
from uidhub.models import Account, Instance, Partner, QuotaPool
from uidhub.models.enums import (
    AccountStatus,
    AccountType,
    BillingMethod,
    OperationMethod,
    PartnerKind,
    PaygFreezeStatus,
    Role,
)
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.auth import create_token
from uidhub.resolvers.policy import change_freeze

MASTERS = 1_000
SUBS = 10
BULK = 100


async def load(db: Database) -> tuple[Actor, str]:
    async with db.write() as session:
        partner = Partner(uid="BENCH", name="Bench", kind=PartnerKind.DISTRIBUTOR, alert_emails=[])
        session.add(partner)
        await session.flush()
        token = await create_token(session, partner=partner, role=Role.ADMIN)
        pid = partner.id
    async with db.write() as session:
        await session.execute(
            insert(QuotaPool),
            [
                {"id": m + 1, "partner_id": pid, "amount_cents": 100_000, "deducted_cents": 0, "undeducted_cents": 0}
                for m in range(MASTERS)
            ],
        )
        rows = [
            {
                "id": m + 1,
                "partner_id": pid,
                "uid": f"M{m:05d}",
                "account_type": AccountType.ENTERPRISE,
                "status": AccountStatus.NORMAL,
                "pool_id": m + 1,
                "master_id": None,
            }
            for m in range(MASTERS)
        ]
        rows += [
            {
                "id": MASTERS + m * SUBS + s + 1,
                "partner_id": pid,
                "uid": f"M{m:05d}-S{s:02d}",
                "account_type": AccountType.END_USER,
                "status": AccountStatus.NORMAL,
                "pool_id": m + 1,
                "master_id": m + 1,
                # Every third master has one sub-account frozen in its own right.
                "payg_freeze": PaygFreezeStatus.FROZEN if s == 0 and m % 3 == 0 else PaygFreezeStatus.NORMAL,
            }
            for m in range(MASTERS)
            for s in range(SUBS)
        ]
        await session.execute(insert(Account), rows)
        await session.execute(
            insert(Instance),
            [
                {"account_id": r["id"], "billing_method": method, "amount_cents": 0}
                for r in rows
                for method in (BillingMethod.PAYG, BillingMethod.SUBSCRIPTION)
            ],
        )
    if db.is_postgres:
        async with db.engine.begin() as conn:
            for table in ("quota_pools", "accounts", "instances"):
                await conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
                )
                await conn.execute(text(f"ANALYZE {table}"))
    actor = Actor(
        partner_id=pid,
        partner_uid="BENCH",
        partner_kind=PartnerKind.DISTRIBUTOR,
        role=Role.ADMIN,
        method=OperationMethod.PLATFORM,
        operator_uid="BENCH",
        operator_name="bench",
        is_ram=False,
    )
    return actor, token


async def preview(db: Database, actor: Actor, uids: list[str]) -> int:
    async with db.session() as session:
        outcome = await change_freeze(session, actor, uids, target=PaygFreezeStatus.FROZEN, confirm=False, reason=None)
        return len(outcome.affected)


async def baseline(db: Database, actor: Actor, uids: list[str]) -> int:
    """The same rows by hand: the named accounts, their masters and subs, and the PAYG instance count."""
    async with db.session() as session:
        named = select(Account.id).where(Account.uid.in_(uids), actor.account_scope())
        rows = (
            await session.execute(
                select(Account.id, Account.uid, Account.master_id, Account.payg_freeze, Account.status).where(
                    actor.account_scope(), or_(Account.uid.in_(uids), Account.master_id.in_(named))
                )
            )
        ).all()
        ids = [r[0] for r in rows if r[3] is PaygFreezeStatus.NORMAL]
        await session.scalar(
            select(func.count(Instance.id)).where(
                Instance.account_id.in_(ids), Instance.billing_method == BillingMethod.PAYG
            )
        )
        return len(ids)


async def timed(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    await fn()  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--database-url")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
        await upgrade(url)
        db = Database(url)
        try:
            t0 = time.perf_counter()
            actor, token = await load(db)
            print(
                f"database: {db.dialect}; loaded {MASTERS} masters x {SUBS} subs, "
                f"{MASTERS * (SUBS + 1) * 2} instances in {time.perf_counter() - t0:.1f}s"
            )
            rng = random.Random(7)
            masters = [f"M{m:05d}" for m in range(MASTERS)]

            from uidhub.app import create_app
            from uidhub.settings import Settings

            app = create_app(Settings(database_url=url, export_dir=f"{tmp}/exports"), db=db)
            query = (
                "mutation($i: FreezeInput!) { freezePayg(input: $i) { applied affectedPaygInstances "
                "affectedAccounts { uid } results { uid userErrors { code } } } }"
            )
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:

                async def graphql(uids: list[str]) -> None:
                    response = await client.post(
                        "/graphql",
                        json={"query": query, "variables": {"i": {"uids": uids, "confirm": False}}},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    body = response.json()
                    assert "errors" not in body, body

                one = [rng.choice(masters)]
                bulk = rng.sample(masters, BULK)
                affected_one, affected_bulk = await preview(db, actor, one), await preview(db, actor, bulk)
                figures = []
                for label, uids, affected in (
                    ("1 master", one, affected_one),
                    (f"{BULK} masters", bulk, affected_bulk),
                ):
                    base = await timed(lambda u=uids: baseline(db, actor, u), args.repeat)
                    resolver = await timed(lambda u=uids: preview(db, actor, u), args.repeat)
                    api = await timed(lambda u=uids: graphql(u), args.repeat)
                    figures.append((label, affected, base, resolver, api))
        finally:
            await db.dispose()

    print(f"median of {args.repeat} runs each")
    header = ("preview of", "affected", "baseline SQL", "resolver", "ratio", "GraphQL", "ratio")
    print(f"{header[0]:<14}{header[1]:>9}{header[2]:>14}{header[3]:>11}{header[4]:>7}{header[5]:>11}{header[6]:>7}")
    for label, affected, base, resolver, api in figures:
        print(
            f"{label:<14}{affected:>9}{base * 1000:>12.2f}ms{resolver * 1000:>9.2f}ms{resolver / base:>6.1f}x"
            f"{api * 1000:>9.2f}ms{api / base:>6.1f}x"
        )


if __name__ == "__main__":
    asyncio.run(main())

"""Benchmark: `recordConsumption` on a pool with 10 alert thresholds vs a pool with 1, in the same run.

For SQLite (a temp file) and PostgreSQL (a temporary database, when a URL is given): two accounts, each
with its own pool; pool ONE has one PERCENT_OF_QUOTA threshold, pool TEN has ten (4 PERCENT_OF_QUOTA,
4 AVAILABLE_BELOW, 2 RUNS_OUT_WITHIN_DAYS: the worst case, the forecast kind adds its SUM of recent spend).
Each consumption is the whole mutation below GraphQL (`resolvers.quota.change_balance` in its own write
transaction: key claim, ledger row, atomic UPDATE, credit control, threshold evaluation, stored result).
No threshold crosses (that cost is the events and emails, not the evaluation). Rounds alternate which pool
goes first, and within a round the pools alternate consumption by consumption; the medians of the single
consumption times give the ratio TEN / ONE (target ≤ 1.2). Also prints the SQL statements one consumption
runs on each pool.

    .venv/bin/python bench/bench_thresholds.py [--rounds 15] [--per-round 40]
        [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from uidhub.db import Database
from uidhub.migrate import upgrade
from uidhub.models import Partner
from uidhub.models.enums import AccountType, AlertSeverity, OperationMethod, PartnerKind, Role, ThresholdKind
from uidhub.resolvers import accounts, quota, thresholds
from uidhub.resolvers.actor import Actor

TEN = (
    [(ThresholdKind.PERCENT_OF_QUOTA, p) for p in (5, 10, 15, 20)]
    + [(ThresholdKind.AVAILABLE_BELOW, c) for c in (1_000, 2_000, 3_000, 4_000)]
    + [(ThresholdKind.RUNS_OUT_WITHIN_DAYS, d) for d in (1, 2)]
)


def spec(kind: ThresholdKind, value: int) -> thresholds.ThresholdSpec:
    amount = value if kind is ThresholdKind.AVAILABLE_BELOW else None
    return thresholds.ThresholdSpec(
        kind=kind,
        value=None if amount is not None else value,
        amount_cents=amount,
        severity=AlertSeverity.WARNING,
        recipients=None,
        action=None,
        requires_approval=False,
    )


async def load(db: Database) -> Actor:
    async with db.write() as session:
        partner = Partner(uid="BENCH", name="Bench", kind=PartnerKind.DISTRIBUTOR, alert_emails=["ops@example.com"])
        session.add(partner)
        await session.flush()
        actor = Actor(
            partner_id=partner.id,
            partner_uid="BENCH",
            partner_kind=PartnerKind.DISTRIBUTOR,
            role=Role.ADMIN,
            method=OperationMethod.API,
            operator_uid="BENCH",
            operator_name="Bench",
            is_ram=False,
        )
        for uid in ("ONE", "TEN"):
            await accounts.link_account(
                session,
                actor,
                uid=uid,
                account_type=AccountType.END_USER,
                nickname=None,
                email=None,
                master_uid=None,
                quota_amount_cents=1_000_000_000_00,
            )
    async with db.write() as session:
        await thresholds.add_threshold(session, actor, "ONE", spec(ThresholdKind.PERCENT_OF_QUOTA, 10))
    for kind, value in TEN:
        async with db.write() as session:
            await thresholds.add_threshold(session, actor, "TEN", spec(kind, value))
    return actor


async def consume(db: Database, actor: Actor, uid: str, key: str) -> None:
    async with db.write() as session:
        await quota.change_balance(session, actor, quota.BalanceOp.RECORD, uid, 1, key)


async def statements(db: Database, actor: Actor, uid: str) -> int:
    seen: list[str] = []

    def on_execute(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")):
            seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        await consume(db, actor, uid, f"count-{uid}-{uuid.uuid4().hex}")
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", on_execute)
    return len(seen)


async def bench(url: str, label: str, rounds: int, per_round: int) -> float:
    await upgrade(url)
    db = Database(url)
    try:
        actor = await load(db)
        for i in range(10):  # warm-up: connections, statement caches
            await consume(db, actor, "ONE", f"warm-one-{i}")
            await consume(db, actor, "TEN", f"warm-ten-{i}")
        times: dict[str, list[float]] = {"ONE": [], "TEN": []}
        for r in range(rounds):
            for i in range(per_round):
                # Alternate pool by pool, first one then the other, so that load drift hits both alike.
                order = ("ONE", "TEN") if (r + i) % 2 == 0 else ("TEN", "ONE")
                for uid in order:
                    start = time.perf_counter()
                    await consume(db, actor, uid, f"r{r}-{uid}-{i}")
                    times[uid].append(time.perf_counter() - start)
        one, ten = statistics.median(times["ONE"]), statistics.median(times["TEN"])
        print(f"[{label}] {rounds} rounds × {per_round} consumptions per pool, interleaved one by one")
        print(
            f"  1 threshold:   median {one * 1000:7.3f} ms / consumption, "
            f"{await statements(db, actor, 'ONE')} statements"
        )
        print(
            f"  10 thresholds: median {ten * 1000:7.3f} ms / consumption, "
            f"{await statements(db, actor, 'TEN')} statements"
        )
        ratio = ten / one
        print(f"  ratio 10 / 1: {ratio:.3f} (target ≤ 1.2) {'ok' if ratio <= 1.2 else 'OVER'}")
        return ratio
    finally:
        await db.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--postgres-url", default=None, help="an admin URL; a temporary database is created")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await bench(f"sqlite+aiosqlite:///{tmp}/bench.db", "sqlite", args.rounds, args.per_round)
    if args.postgres_url:
        name = f"bench_thresholds_{uuid.uuid4().hex[:8]}"
        admin = Database(args.postgres_url)
        try:
            async with admin.engine.connect() as conn:
                await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(
                    text(f'CREATE DATABASE "{name}"')
                )
            try:
                url = make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False)
                await bench(url, "postgresql", args.rounds, args.per_round)
            finally:
                async with admin.engine.connect() as conn:
                    await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(
                        text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    )
        finally:
            await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())

"""Benchmark: every `endUsers` shape and `summary` at a small and a large number of accounts.

For each size it builds a fresh database, links the accounts with `import-accounts` (90% masters and
standalone accounts, 10% sub-accounts, one partner; its rate is printed), marks a few of them frozen,
banned, shut down and below their warning level, and then times each shape through `/graphql` (the
app in-process, over ASGI): the median of `--runs` requests after two warm-ups. Next to it, the floor:
the same SQL statements the request ran, captured from the engine and replayed as plain SQL with no
GraphQL, ORM or HTTP around them. The figure is each shape's large/small ratio (≤ 1.5 is the goal;
a counted search is judged by its absolute time instead).

    .venv/bin/python bench/bench_scale.py [--small 10000] [--large 1000000] [--runs 15]
        [--database sqlite|postgres] [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
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

from uidhub.app import create_app
from uidhub.db import Database, null_pool_engine
from uidhub.import_accounts import HEADER, import_accounts
from uidhub.migrate import upgrade
from uidhub.models import Account, Partner
from uidhub.models.enums import PartnerKind, Role
from uidhub.resolvers.auth import create_token
from uidhub.settings import Settings

NODE = "uid nickname accountStatus quota { available } policy { effectivePaygFreezeStatus }"


def shape(filter: str = "", order: str = "", count: bool = False, after: str = "", extra: str = "") -> str:
    args = ["first: 100"]
    if filter:
        args.append(f"filter: {{{filter}}}")
    if order:
        field, direction = order.split()
        args.append(f"orderBy: {{field: {field}, direction: {direction}}}")
    if after:
        args.append(f'after: "{after}"')
    total = "totalCount " if count else ""
    return f"{{ endUsers({', '.join(args)}) {{ {total}edges {{ node {{ {NODE} {extra} }} }} }} }}"


def shapes(deep_cursor: str) -> list[tuple[str, str]]:
    out = [
        ("default order", shape()),
        ("default order + totalCount", shape(count=True)),
    ]
    for field in ("LINKED_AT", "UID", "NICKNAME", "AVAILABLE_QUOTA"):
        for direction in ("ASC", "DESC"):
            out.append((f"order {field} {direction}", shape(order=f"{field} {direction}")))
    out += [
        ("masters by AVAILABLE_QUOTA", shape("includeSubAccounts: false", "AVAILABLE_QUOTA DESC")),
        (
            "README page (masters by available, totalCount, subAccounts)",
            shape("includeSubAccounts: false", "AVAILABLE_QUOTA DESC", True, extra="subAccounts { uid }"),
        ),
        ("deep page (after the middle row)", shape(after=deep_cursor)),
        ("search UID prefix", shape('search: "C00012"')),
        ("search UID prefix + totalCount", shape('search: "C00012"', count=True)),
        ("search matching nothing", shape('search: "zqxwv"')),
        ("search matching nothing + totalCount", shape('search: "zqxwv"', count=True)),
        ("search nickname substring", shape('search: "omer 77"')),
        ("search nickname substring + totalCount", shape('search: "omer 77"', count=True)),
    ]
    for name, f in [
        ("frozen", "paygFreezeStatus: FROZEN"),
        ("not frozen", "paygFreezeStatus: NORMAL"),
        ("banned", "purchaseControl: BANNED"),
        ("shutdown", "creditControlStatuses: [SHUTDOWN]"),
        ("below warning", "belowWarningLevel: true"),
        ("masters only", "includeSubAccounts: false"),
        ("status NORMAL", "accountStatuses: [NORMAL]"),
        ("type ENTERPRISE", "accountTypes: [ENTERPRISE]"),
    ]:
        out.append((f"filter {name}", shape(f)))
        out.append((f"filter {name} + totalCount", shape(f, count=True)))
    out.append(
        (
            "summary",
            "{ summary { accounts frozen purchaseBanned shutdown belowWarningLevel totalQuota "
            "totalAvailable totalOutstanding } }",
        )
    )
    return out


# ---------------------------------------------------------------- data


def write_file(path: Path, accounts: int) -> None:
    masters = accounts - accounts // 10
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(masters):
            writer.writerow(
                [
                    f"C{i:07d}",
                    f"Customer {i} Ltd",
                    "",
                    "Hangzhou" if i % 50 == 0 else "",
                    "",
                    f"{(i * 37) % 5000}.00",
                    "30" if i % 10 == 0 else "",
                ]
            )
        for i in range(accounts - masters):
            writer.writerow([f"C{i:07d}-S", f"Sub {i}", "", "", f"C{i:07d}", "", ""])


async def mark_some(db: Database) -> None:
    """A few frozen, banned, shut down and below-warning accounts, through plain UPDATEs (triggers follow).

    Each flag marks more than a page (101 rows) even at 10,000 accounts: with 1 in 200–300 marked, as before,
    the small database's flag pages held 34–50 rows against 101 at 1M, and their ratios compared page sizes.
    """
    async with db.write() as session:
        await session.execute(text("UPDATE accounts SET payg_freeze = 'FROZEN' WHERE id % 40 = 7"))
        await session.execute(text("UPDATE accounts SET purchase_control = 'BANNED' WHERE id % 60 = 11"))
        await session.execute(text("UPDATE accounts SET account_type = 'ENTERPRISE' WHERE id % 50 = 3"))
        await session.execute(
            text(
                "UPDATE quota_pools SET undeducted_cents = amount_cents + 100, credit_control_status = 'SHUTDOWN' "
                "WHERE id % 70 = 5"
            )
        )
        await session.execute(
            text("UPDATE quota_pools SET undeducted_cents = amount_cents * 9 / 10 WHERE id % 10 = 0 AND id % 70 <> 5")
        )


async def build(url: str, accounts: int, workdir: Path) -> tuple[str, float]:
    """Migrate, import, mark; returns an ADMIN token and the import rate (rows/s)."""
    await upgrade(url)
    db = Database(url)
    try:
        async with db.write() as session:
            partner = Partner(uid="BENCH", name="Bench", kind=PartnerKind.DISTRIBUTOR, alert_emails=[])
            session.add(partner)
            await session.flush()
            token = await create_token(session, partner=partner, role=Role.ADMIN)
        path = workdir / f"accounts-{accounts}.csv"
        write_file(path, accounts)
        started = time.perf_counter()
        await import_accounts(db, "BENCH", path)
        rate = accounts / (time.perf_counter() - started)
        await mark_some(db)
        async with db.engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
            await conn.commit()
    finally:
        await db.dispose()
    return token, rate


async def deep_cursor(db: Database) -> str:
    """The default order's cursor of the middle row: a page as deep as the table allows."""
    from uidhub.resolvers.pagination import encode_cursor

    async with db.read() as session:
        total = int(await session.scalar(select(text("count(*)")).select_from(Account)) or 0)
        row = (
            await session.execute(
                select(Account.linked_at, Account.uid)
                .order_by(Account.linked_at.desc(), Account.uid.desc())
                .offset(total // 2)
                .limit(1)
            )
        ).one()
    return encode_cursor("eu:LINKED_AT:d", [row[0].isoformat(), row[1]])


# ---------------------------------------------------------------- timing


async def time_shapes(url: str, token: str, runs: int, workdir: Path) -> dict[str, tuple[float, float]]:
    """shape → (median ms through /graphql, median ms of its SQL replayed plainly)."""
    db = Database(url)
    app = create_app(Settings(database_url=url, export_dir=str(workdir / "exports")), db=db)
    results: dict[str, tuple[float, float]] = {}
    try:
        cursor = await deep_cursor(db)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:
            headers = {"Authorization": f"Bearer {token}"}
            for name, query in shapes(cursor):
                captured: list[tuple[str, Any]] = []

                def capture(
                    _c: Any,
                    _cur: Any,
                    statement: str,
                    params: Any,
                    *_a: Any,
                    captured: list[tuple[str, Any]] = captured,
                ) -> None:
                    captured.append((statement, params))

                times = []
                for i in range(runs + 2):
                    if i == 1:
                        captured.clear()
                        event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
                    started = time.perf_counter()
                    response = await client.post("/graphql", json={"query": query}, headers=headers)
                    elapsed = time.perf_counter() - started
                    if i == 1:
                        event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
                    body = response.json()
                    if "errors" in body:
                        raise SystemExit(f"{name}: {body['errors']}")
                    if i >= 2:
                        times.append(elapsed)
                results[name] = (statistics.median(times) * 1000, await floor(url, captured, runs))
    finally:
        await db.dispose()
    return results


async def floor(url: str, statements: list[tuple[str, Any]], runs: int) -> float:
    """Median ms of running the request's SELECTs back to back as plain driver SQL on one connection."""
    engine = null_pool_engine(url)
    selects = [(s, p) for s, p in statements if s.lstrip().upper().startswith(("SELECT", "WITH", "SET LOCAL"))]
    times = []
    try:
        async with engine.connect() as conn:
            for i in range(runs + 2):
                started = time.perf_counter()
                for statement, params in selects:
                    result = await conn.exec_driver_sql(statement, params)
                    if result.returns_rows:
                        result.all()
                if i >= 2:
                    times.append(time.perf_counter() - started)
            await conn.rollback()
    finally:
        await engine.dispose()
    return statistics.median(times) * 1000


# ---------------------------------------------------------------- main


async def with_database(kind: str, pg_url: str, workdir: Path, accounts: int, runs: int) -> tuple[dict, float]:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / f'bench-{accounts}.db'}"
        token, rate = await build(url, accounts, workdir)
        return await time_shapes(url, token, runs, workdir), rate
    name = f"uidhub_bench_{uuid.uuid4().hex[:8]}"
    admin = null_pool_engine(pg_url).execution_options(isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        token, rate = await build(url, accounts, workdir)
        return await time_shapes(url, token, runs, workdir), rate
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="uidhub-bench-scale-") as tmp:
        workdir = Path(tmp)
        small, small_rate = await with_database(args.database, args.postgres_url, workdir, args.small, args.runs)
        large, large_rate = await with_database(args.database, args.postgres_url, workdir, args.large, args.runs)
    print(
        f"\n{args.database}: {args.small:,} vs {args.large:,} accounts (one partner, 10% sub-accounts), "
        f"median of {args.runs} requests through /graphql; floor = the same SQL replayed plainly"
    )
    print(f"import-accounts: {small_rate:,.0f} rows/s at {args.small:,}, {large_rate:,.0f} rows/s at {args.large:,}")
    width = max(len(n) for n in small)
    print(f"{'shape':<{width}}  {'small ms':>9} {'large ms':>9} {'ratio':>6}   {'floor S':>8} {'floor L':>8}")
    for name, (ms_small, floor_small) in small.items():
        ms_large, floor_large = large[name]
        print(
            f"{name:<{width}}  {ms_small:9.1f} {ms_large:9.1f} {ms_large / ms_small:6.2f}   "
            f"{floor_small:8.2f} {floor_large:8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

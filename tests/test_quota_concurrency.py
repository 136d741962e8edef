"""No lost update: concurrent consumption, repeats and adjustments on one pool, SQLite and PostgreSQL.

The in-process tests run many httpx clients over the ASGI app at once (real
concurrent database connections on PostgreSQL, BEGIN IMMEDIATE waits on
SQLite). The PostgreSQL test also runs two uvicorn server processes on the
same database and spreads the clients over both.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.support.accounts import link
from tests.support.api import Api, make_partner, make_token
from tests.support.db import needs_postgres, truncate_all
from tests.support.net import free_port
from tests.support.quota import PAYLOAD, counts, quota
from uidhub.db import Database
from uidhub.models import LedgerEntry, QuotaAdjustment, QuotaPool

RECORD = f"mutation($i: AmountInput!) {{ recordConsumption(input: $i) {{ {PAYLOAD} }} }}"
DEDUCT = f"mutation($i: AmountInput!) {{ deductConsumption(input: $i) {{ {PAYLOAD} }} }}"
SET = f"mutation($i: SetQuotaAmountInput!) {{ setQuotaAmount(input: $i) {{ {PAYLOAD} }} }}"


async def post(client: httpx.AsyncClient, token: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables}, headers={"Authorization": f"Bearer {token}"}
    )
    body = response.json()
    assert "errors" not in body, body
    (payload,) = body["data"].values()
    return payload


async def consume(clients: list[httpx.AsyncClient], token: str, per_client: int, prefix: str) -> None:
    """Each client sends `per_client` consumptions of 0.01, one after the other; the clients run at once."""

    async def one(n: int, client: httpx.AsyncClient) -> None:
        for i in range(per_client):
            payload = await post(
                client, token, RECORD, {"i": {"uid": "U1", "amount": "0.01", "idempotencyKey": f"{prefix}-{n}-{i}"}}
            )
            assert payload["userErrors"] == []

    await asyncio.gather(*(one(n, c) for n, c in enumerate(clients)))


async def repeats(clients: list[httpx.AsyncClient], token: str, n: int) -> list[dict[str, Any]]:
    return list(
        await asyncio.gather(
            *(
                post(
                    clients[i % len(clients)],
                    token,
                    RECORD,
                    {"i": {"uid": "U1", "amount": "1.00", "idempotencyKey": "once"}},
                )
                for i in range(n)
            )
        )
    )


async def mixed(clients: list[httpx.AsyncClient], token: str) -> int:
    """Adjustments, consumptions and deductions at once; returns how many deductions succeeded."""
    deducted = 0

    async def adjust(n: int, client: httpx.AsyncClient) -> None:
        for i in range(5):
            payload = await post(client, token, SET, {"i": {"uid": "U1", "amount": f"{100 + n * 10 + i}.{n:02d}"}})
            assert payload["userErrors"] == []

    async def spend(n: int, client: httpx.AsyncClient) -> None:
        nonlocal deducted
        for i in range(5):
            payload = await post(
                client, token, RECORD, {"i": {"uid": "U1", "amount": "0.03", "idempotencyKey": f"mr-{n}-{i}"}}
            )
            assert payload["userErrors"] == []
            payload = await post(
                client, token, DEDUCT, {"i": {"uid": "U1", "amount": "0.02", "idempotencyKey": f"md-{n}-{i}"}}
            )
            if payload["userErrors"]:
                assert payload["userErrors"][0]["code"] == "INVALID_INPUT"
            else:
                deducted += 1

    half = len(clients) // 2
    await asyncio.gather(
        *(adjust(n, c) for n, c in enumerate(clients[:half])), *(spend(n, c) for n, c in enumerate(clients[half:]))
    )
    return deducted


async def check_pool_and_chain(db: Database) -> tuple[int, int, int]:
    """available == amount − deducted − undeducted, and each record's before is the previous record's after."""
    async with db.read() as session:
        pool = await session.scalar(select(QuotaPool).join(LedgerEntry, LedgerEntry.pool_id == QuotaPool.id).limit(1))
        assert pool is not None
        records = list(
            await session.scalars(
                select(QuotaAdjustment).where(QuotaAdjustment.pool_id == pool.id).order_by(QuotaAdjustment.id)
            )
        )
    assert records[0].operation_type.value == "QUOTA_CREATE" and records[0].before_cents == 0
    for previous, record in itertools.pairwise(records):
        assert record.before_cents == previous.after_cents, (previous.id, record.id)
        assert record.value_cents == record.after_cents - record.before_cents
        assert record.operation_type.value == "QUOTA_ADJUSTMENT"
    assert records[-1].after_cents == pool.amount_cents
    assert pool.deducted_cents >= 0 and pool.undeducted_cents >= 0
    return pool.amount_cents, pool.deducted_cents, pool.undeducted_cents


def clients_for(api: Api, n: int) -> list[httpx.AsyncClient]:
    return [httpx.AsyncClient(transport=api.client._transport, base_url="http://test") for _ in range(n)]


# ---------------------------------------------------------------- in-process, both databases


async def test_200_consumptions_from_20_clients_sum_exactly(api: Api) -> None:
    await link(api, "U1", quotaAmount="1.00")
    clients = clients_for(api, 20)
    try:
        await consume(clients, api.tokens["admin"], 10, "c")
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    q = await quota(api, "U1")
    assert q["consumedUndeducted"] == "2.00"
    assert q["available"] == "-1.00" and q["outstandingAmount"] == "1.00"
    async with api.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(LedgerEntry)) == 200
        assert await session.scalar(select(func.sum(LedgerEntry.amount_cents))) == 200


async def test_50_concurrent_repeats_of_one_key_count_once(api: Api) -> None:
    await link(api, "U1", quotaAmount="10.00")
    clients = clients_for(api, 10)
    try:
        payloads = await repeats(clients, api.tokens["admin"], 50)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert all(p == payloads[0] for p in payloads)
    assert payloads[0]["userErrors"] == [] and payloads[0]["quota"]["consumedUndeducted"] == "1.00"
    assert (await quota(api, "U1"))["consumedUndeducted"] == "1.00"
    c = await counts(api.db)
    assert (c["ledger"], c["keys"]) == (1, 1)


async def test_concurrent_adjustments_and_consumptions_keep_the_books(api: Api) -> None:
    await link(api, "U1", quotaAmount="50.00")
    clients = clients_for(api, 16)
    try:
        deductions = await mixed(clients, api.tokens["admin"])
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    amount, deducted, undeducted = await check_pool_and_chain(api.db)
    assert deducted == 2 * deductions
    assert deducted + undeducted == 8 * 5 * 3  # every consumption counted once
    q = await quota(api, "U1")
    assert q["available"] == f"{(amount - deducted - undeducted) / 100:.2f}"
    async with api.db.read() as session:
        changes = await session.scalar(select(func.count()).select_from(QuotaAdjustment))
    assert changes == 1 + 8 * 5  # the link's QUOTA_CREATE and every (distinct) amount


# ---------------------------------------------------------------- two server processes, PostgreSQL


@pytest.fixture
def two_servers(pg_database_url: str, tmp_path: Path) -> Iterator[list[str]]:
    env = {
        **os.environ,
        "UIDHUB_DATABASE_URL": pg_database_url,
        "UIDHUB_EXPORT_DIR": str(tmp_path / "exports"),
        "UIDHUB_REDIS_URL": "",
    }
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "uidhub.asgi:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"server-{port}.log").open("wb"),
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 30
        for url, proc in zip(urls, procs, strict=True):
            while True:
                assert proc.poll() is None, (tmp_path / f"server-{url.rsplit(':', 1)[1]}.log").read_text()
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


@needs_postgres
async def test_two_server_processes_on_postgres(pg_database_url: str, two_servers: list[str]) -> None:
    db = Database(pg_database_url)
    try:
        await truncate_all(db)
        partner = await make_partner(db, "P-MAIN")
        token = await make_token(db, partner)
        clients = [httpx.AsyncClient(base_url=two_servers[n % 2], timeout=60) for n in range(20)]
        try:
            link_payload = await post(
                clients[0],
                token,
                'mutation { linkAccount(input: {uid: "U1", quotaAmount: "50.00"}) { userErrors { code } } }',
                {},
            )
            assert link_payload["userErrors"] == []
            await consume(clients, token, 10, "two")
            async with db.read() as session:
                assert await session.scalar(select(QuotaPool.undeducted_cents)) == 200  # exactly 2.00

            payloads = await repeats(clients, token, 50)
            assert all(p == payloads[0] for p in payloads)
            async with db.read() as session:
                assert await session.scalar(select(QuotaPool.undeducted_cents)) == 300  # the repeat counted once

            deductions = await mixed(clients[:16], token)
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        _amount, deducted, undeducted = await check_pool_and_chain(db)
        assert deducted == 2 * deductions
        assert deducted + undeducted == 300 + 8 * 5 * 3
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(QuotaAdjustment)) == 1 + 8 * 5
            assert (
                await session.scalar(
                    select(func.sum(LedgerEntry.amount_cents)).where(LedgerEntry.kind == "CONSUMPTION")
                )
                == 300 + 8 * 5 * 3
            )
    finally:
        await db.dispose()

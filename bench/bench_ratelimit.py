"""Benchmark: what the rate limiter costs per request, in memory and in Redis, vs no limits, in the same run.

One migrated SQLite database, one ADMIN token, `{ viewer { method } }` (a request that is nearly all overhead,
so the limiter's share is as large as it gets). The same app is built three times: limits switched off (all 0,
the baseline), in-process counters, and Redis counters (when a Redis URL is given). Requests go in-process
through httpx's ASGI transport, rounds alternating between the variants so machine load hits them alike. The
figures are requests/s and the ratio to the baseline.

    .venv/bin/python bench/bench_ratelimit.py [--requests 2000] [--concurrency 8] [--redis-url redis://…]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from models import Partner
from models.enums import PartnerKind, Role
from resolvers.auth import create_token
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.migrate import upgrade
from uidhub.settings import Settings

OFF = {"rate_limit_token_burst": 0, "rate_limit_ip_burst": 0, "auth_failures_per_ip": 0, "ws_max_connections": 0,
       "ws_max_connections_per_ip": 0, "ws_max_connections_per_token": 0}
#: Limits on, high enough never to refuse during the run (the cost of counting, not of refusing).
ON = {"rate_limit_token_burst": 10_000_000, "rate_limit_ip_burst": 10_000_000}


async def measure(client: httpx.AsyncClient, token: str, requests: int, concurrency: int) -> float:
    counter = iter(range(requests))
    headers = {"Authorization": f"Bearer {token}"}

    async def worker() -> None:
        for _ in counter:  # bounded: `requests` in total over all workers
            response = await client.post("/graphql", json={"query": "{ viewer { method } }"}, headers=headers)
            assert response.status_code == 200, response.text

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - start)


async def main(requests: int, concurrency: int, redis_url: str | None, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        await upgrade(url)
        db = Database(url)
        async with db.write() as session:
            partner = Partner(uid="P-BENCH", name="Bench", kind=PartnerKind.DISTRIBUTOR, alert_emails=[])
            session.add(partner)
            await session.flush()
            token = await create_token(session, partner=partner, role=Role.ADMIN)
        variants: dict[str, dict[str, Any]] = {"no limits (baseline)": {**OFF, "redis_url": None},
                                               "in-memory counters": {**ON, "redis_url": None}}
        if redis_url:
            variants["Redis counters"] = {**ON, "redis_url": redis_url,
                                          "rate_limit_redis_prefix": f"bench-{uuid.uuid4().hex}:"}
        clients = {}
        for name, values in variants.items():
            app = create_app(Settings(_env_file=None, database_url=url, export_dir=f"{tmp}/exports",  # type: ignore[call-arg]
                                      **values), db=db)
            clients[name] = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
        rates: dict[str, list[float]] = {name: [] for name in variants}
        try:
            for client in clients.values():  # warm-up
                await measure(client, token, 50, concurrency)
            for _ in range(rounds):
                for name, client in clients.items():
                    rates[name].append(await measure(client, token, requests, concurrency))
        finally:
            for client in clients.values():
                await client.aclose()
            await db.dispose()
        baseline = max(rates["no limits (baseline)"])
        print(f"{requests} x `{{ viewer {{ method }} }}` per round, concurrency {concurrency}, best of {rounds} rounds")
        for name, values in rates.items():
            best = max(values)
            print(f"  {name:<24} {best:8.1f} req/s   ratio {best / baseline:5.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default=os.environ.get("UIDHUB_TEST_REDIS_URL"))
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256 or not 1 <= args.rounds <= 20:
        raise SystemExit("--requests 1..100000, --concurrency 1..256, --rounds 1..20")
    asyncio.run(main(args.requests, args.concurrency, args.redis_url, args.rounds))

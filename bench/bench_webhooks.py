"""Benchmark: webhook deliveries per second against a real receiver (Starlette under uvicorn on loopback).

Queues N deliveries for E endpoints in a fresh database, then, in the same run:

- sender: `WebhookSender.run_once()` until every delivery SUCCEEDED (endpoint
  leases, one delivery at a time per endpoint in order, endpoints in
  parallel, every attempt recorded in its own transaction with the lease check);
- baseline, with no database at all: the same signed bodies POSTed by a plain
  `httpx.AsyncClient` loop, one endpoint after the other in parallel, exactly
  like the sender's per-endpoint order.

The receiver runs in a separate process so that it does not share the
measured event loop. The ratio sender/baseline is the figure.

    .venv/bin/python bench/bench_webhooks.py [--deliveries 1000] [--endpoints 4] [--database-url URL-of-a-scratch-db]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import delete, func, select

from tests.support.net import free_port
from uidhub.db import Database
from uidhub.migrate import upgrade
from uidhub.models import Partner
from uidhub.models.enums import PartnerKind, WebhookDeliveryStatus
from uidhub.models.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from uidhub.notifications.webhooks import WebhookSender, delivery_values, new_secret, signature_header
from uidhub.settings import Settings


def run_receiver(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hook(request):  # type: ignore[no-untyped-def]
        await request.body()
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def queue(db: Database, base: str, deliveries: int, endpoints: int) -> list[tuple[str, str]]:
    """Fresh endpoints and pending deliveries; returns (url, body) of each for the baseline."""
    async with db.write() as session:
        await session.execute(delete(WebhookAttempt))
        await session.execute(delete(WebhookDelivery))
        await session.execute(delete(WebhookEndpoint))
        partner = await session.scalar(select(Partner).where(Partner.uid == "BENCH"))
        if partner is None:
            partner = Partner(uid="BENCH", name="Bench", kind=PartnerKind.DISTRIBUTOR, alert_emails=[])
            session.add(partner)
            await session.flush()
        rows = [
            WebhookEndpoint(
                partner_id=partner.id,
                url=f"{base}/e{i}",
                event_kinds=["ACCOUNT_LINKED"],
                enabled=True,
                secret=new_secret(),
                created_at=datetime.now(UTC),
            )
            for i in range(endpoints)
        ]
        session.add_all(rows)
        await session.flush()
        bodies: list[tuple[str, str]] = []
        for n in range(deliveries):
            endpoint = rows[n % endpoints]
            payload = {
                "id": f"bench-{n}",
                "kind": "ACCOUNT_LINKED",
                "occurredAt": "2026-12-01T00:00:00Z",
                "partner": {"uid": "BENCH"},
                "account": {"uid": f"{n:016d}", "nickname": None},
                "change": {"action": "ACCOUNT_LINKED"},
            }
            values = delivery_values(endpoint, payload)
            session.add(WebhookDelivery(**values))
            bodies.append((endpoint.url, values["body"]))
    return bodies


async def run_sender(db: Database, settings: Settings) -> float:
    sender = WebhookSender(db, settings)
    started = time.perf_counter()
    try:
        while await sender.run_once():
            pass
    finally:
        await sender.stop()
    elapsed = time.perf_counter() - started
    async with db.read() as session:
        done = await session.scalar(
            select(func.count()).where(WebhookDelivery.status == WebhookDeliveryStatus.SUCCEEDED)
        )
        total = await session.scalar(select(func.count()).select_from(WebhookDelivery))
    assert done == total, f"{done} of {total} delivered"
    return elapsed


async def run_baseline(bodies: list[tuple[str, str]]) -> float:
    by_url: dict[str, list[str]] = {}
    for url, body in bodies:
        by_url.setdefault(url, []).append(body)
    secret = new_secret()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, connect=5), follow_redirects=False) as client:

        async def one_endpoint(url: str, items: list[str]) -> None:
            for body in items:  # in order, one at a time, as the sender does
                raw = body.encode()
                headers = {
                    "Content-Type": "application/json",
                    "Uidhub-Signature": signature_header([secret], int(time.time()), raw),
                    "Uidhub-Event-Id": json.loads(body)["id"],
                }
                response = await client.post(url, content=raw, headers=headers)
                assert response.status_code == 200

        started = time.perf_counter()
        await asyncio.gather(*(one_endpoint(u, b) for u, b in by_url.items()))
        return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="a scratch database (its tables are migrated; webhook rows deleted)")
    args = parser.parse_args()

    port = free_port()
    receiver = multiprocessing.Process(target=run_receiver, args=(port,), daemon=True)
    receiver.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
        except OSError:
            await asyncio.sleep(0.1)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
        await upgrade(url)
        db = Database(url)
        settings = Settings(database_url=url, webhook_allow_http_loopback=True)
        sender_times: list[float] = []
        base_times: list[float] = []
        try:
            for _ in range(args.rounds):  # interleaved rounds: noise hits both sides alike
                bodies = await queue(db, base, args.deliveries, args.endpoints)
                sender_times.append(await run_sender(db, settings))
                base_times.append(await run_baseline(bodies))
        finally:
            await db.dispose()
            receiver.terminate()
    sender_median = sorted(sender_times)[len(sender_times) // 2]
    base_median = sorted(base_times)[len(base_times) // 2]
    rate, base_rate = args.deliveries / sender_median, args.deliveries / base_median
    print(
        f"database: {db.dialect}; {args.deliveries} deliveries over {args.endpoints} endpoints, "
        f"{args.rounds} interleaved rounds, medians"
    )
    print(f"webhook sender : {rate:8.1f} deliveries/s")
    print(f"plain httpx    : {base_rate:8.1f} deliveries/s")
    print(f"ratio          : {rate / base_rate:8.3f}")


if __name__ == "__main__":
    asyncio.run(main())

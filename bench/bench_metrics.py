"""Benchmark: the README's list page with metrics off, metrics on, and tracing on, in the same run.

Loads the demo data set (uidhub/demo.py) into a fresh SQLite database, builds
three apps over it, each with an engine of its own (metrics and tracing hook
into the engine): (1) nothing on, (2) UIDHUB_METRICS=true, (3) OpenTelemetry
tracing with a batching span processor whose exporter drops the spans (the
cost measured is making the spans, not shipping them). Requests go through
the ASGI app in process (httpx.ASGITransport), so server and client noise is
the same for all three. Rounds are interleaved, in a rotating order (off,
metrics, tracing; metrics, tracing, off; ...), and each configuration's median
per-request time over the rounds is compared with the baseline's: the ratios
are the figures (targets: metrics <= 1.05, tracing <= 1.3); the headline
ratio is the median of the per-round ratios, so that a machine getting
slower or faster during the run cancels out. The time is the
process's CPU time (all of it is this process: app, driver thread, client),
which other jobs on a shared machine do not inflate; wall-clock ratios are
printed too.

    .venv/bin/python bench/bench_metrics.py [--rounds 21] [--requests 20] [--accounts 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from uidhub import tracing
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.demo import load_demo
from uidhub.migrate import upgrade
from uidhub.settings import Settings

# README.md, "Example operations": the list page.
LIST_PAGE = """{
  endUsers(first: 10, filter: {includeSubAccounts: false}, orderBy: {field: AVAILABLE_QUOTA, direction: ASC}) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { node {
      uid nickname accountStatus businessManager
      quota { amount available warningLevel belowWarningLevel }
      policy { effectivePaygFreezeStatus shutdownPolicy creditControlStatus }
      subAccounts { uid nickname }
    } }
  }
}"""


def dropping_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider


class Target:
    def __init__(self, name: str, client: httpx.AsyncClient, db: Database) -> None:
        self.name = name
        self.client = client
        self.db = db
        self.per_request: list[float] = []
        self.wall: list[float] = []


async def make_target(name: str, url: str, export_dir: str, **settings: Any) -> Target:
    db = Database(url)
    app = create_app(Settings(database_url=url, export_dir=export_dir, **settings), db=db)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
    return Target(name, client, db)


async def run_round(target: Target, token: str, requests: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    start, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        response = await target.client.post("/graphql", json={"query": LIST_PAGE}, headers=headers)
        assert response.status_code == 200 and "errors" not in response.json(), response.text
    target.per_request.append((time.process_time() - start) / requests)
    target.wall.append((time.perf_counter() - wall) / requests)


async def main(rounds: int, requests: int, accounts: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        await upgrade(url)
        loader = Database(url)
        result = await load_demo(loader, Settings(database_url=url), accounts=accounts)
        await loader.dispose()
        assert result.token is not None
        token = result.token

        off = await make_target("off", url, f"{tmp}/exports")
        on = await make_target("metrics", url, f"{tmp}/exports", metrics=True)
        tracing.install(dropping_provider())
        traced = await make_target("tracing", url, f"{tmp}/exports")
        tracing.install(None)
        targets = [off, on, traced]
        for target in targets:  # warm-up: caches, pools, first compilations
            await run_round(target, token, requests)
            target.per_request.clear()
            target.wall.clear()
        for n in range(rounds):
            for target in targets[n % 3:] + targets[: n % 3]:
                await run_round(target, token, requests)
        for target in targets:
            await target.client.aclose()
            await target.db.dispose()

    base = statistics.median(off.per_request)
    base_wall = statistics.median(off.wall)
    print(f"list page (README), {accounts} demo accounts, SQLite, {rounds} interleaved rounds x {requests} requests")
    for target in targets:
        median = statistics.median(target.per_request)
        wall = statistics.median(target.wall)
        print(f"  {target.name:8s} CPU {median * 1000:7.2f} ms/request  ratio {median / base:5.3f}"
              f"   (wall {wall * 1000:7.2f} ms, ratio {wall / base_wall:5.3f})  paired {paired(target, off):5.3f}")
    print(f"metrics on / off: {paired(on, off):.3f} (target <= 1.05)")
    print(f"tracing on / off: {paired(traced, off):.3f} (target <= 1.3)")


def paired(target: Target, base: Target) -> float:
    """The median over rounds of target/base CPU time within the same round: drift of the machine cancels out."""
    return statistics.median(t / b for t, b in zip(target.per_request, base.per_request, strict=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--accounts", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.requests, args.accounts))

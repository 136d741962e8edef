"""Benchmark: the compiled read path (uidhub.compiled) against ordinary execution, same app, same data.

Loads the 10,000 accounts of bench_end_users.py into a fresh database, then serves the uidhub app
twice under uvicorn, each in its own process: once as configured by default (compiled reads on) and
once with UIDHUB_COMPILED_READS=false. Each round sends the same requests to both (rounds
interleaved, so that the shared machine's noise hits both alike) for two queries: the list page
(100 accounts with quota, policy and sub-accounts) and a flat list (100 x 5 scalars). Printed:
the median requests/s of each over the rounds and the ratio compiled / ordinary.

    .venv/bin/python bench/bench_compiled.py [--rounds 7] [--requests 60] [--concurrency 4] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.bench_end_users import load_timed, wait_up
from tests.support.net import free_port

LIST_PAGE = """{ endUsers(first: 100) { totalCount pageInfo { hasNextPage endCursor } edges { cursor node {
  id uid nickname accountType accountStatus email linkedAt businessManager remarks
  quota { amount available consumedDeducted consumedUndeducted outstandingAmount warningThresholdPercent
    warningLevel belowWarningLevel }
  policy { paygFreezeStatus effectivePaygFreezeStatus purchaseControl effectivePurchaseControl shutdownPolicy
    shutdownDelayCredit creditControlStatus }
  subAccounts { uid nickname accountStatus }
} } } }"""
FLAT_LIST = "{ endUsers(first: 100) { edges { node { uid nickname accountStatus linkedAt email } } } }"
QUERIES = {"list page": LIST_PAGE, "flat list": FLAT_LIST}


def run_server(url: str, port: int, compiled: bool) -> None:
    import logging

    import uvicorn

    from uidhub.app import create_app
    from uidhub.settings import Settings

    logging.disable(logging.WARNING)
    settings = Settings(
        database_url=url,
        export_dir=tempfile.mkdtemp(),
        compiled_reads=compiled,
        rate_limit_token_burst=0,
        rate_limit_ip_burst=0,
    )
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="error", access_log=False)


async def rate(
    client: httpx.AsyncClient, url: str, body: dict[str, str], headers: dict[str, str], n: int, c: int
) -> float:
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            response = await client.post(url, json=body, headers=headers)
            assert response.status_code == 200 and b'"errors"' not in response.content

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    return n / (time.perf_counter() - start)


async def bench(url: str, token: str, rounds: int, requests: int, concurrency: int) -> None:
    ports = {"compiled": free_port(), "ordinary": free_port()}
    ctx = multiprocessing.get_context("spawn")
    servers = [
        ctx.Process(target=run_server, args=(url, port, name == "compiled"), daemon=True)
        for name, port in ports.items()
    ]
    for process in servers:
        process.start()
    try:
        bases = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for base in bases.values():
            await wait_up(base)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=2 * concurrency)) as client:
            for query in QUERIES.values():  # warm-up, and the same bytes from both
                answers = [
                    (await client.post(base + "/graphql", json={"query": query}, headers=headers)).content
                    for base in bases.values()
                ]
                assert answers[0] == answers[1], "compiled and ordinary answers differ"
                for base in bases.values():
                    for _ in range(5):
                        await client.post(base + "/graphql", json={"query": query}, headers=headers)
            rates: dict[tuple[str, str], list[float]] = {(q, s): [] for q in QUERIES for s in bases}
            for n in range(rounds):
                for qname, query in QUERIES.items():
                    order = list(bases) if n % 2 == 0 else list(reversed(bases))
                    for sname in order:
                        value = await rate(
                            client, bases[sname] + "/graphql", {"query": query}, headers, requests, concurrency
                        )
                        rates[(qname, sname)].append(value)
            print(f"{rounds} interleaved rounds of {requests} requests each, concurrency {concurrency}")
            for qname in QUERIES:
                compiled = statistics.median(rates[(qname, "compiled")])
                ordinary = statistics.median(rates[(qname, "ordinary")])
                print(
                    f"{qname:<10} compiled {compiled:7.1f} req/s   ordinary {ordinary:7.1f} req/s   "
                    f"ratio compiled / ordinary {compiled / ordinary:.2f}"
                )
    finally:
        for process in servers:  # ours, by handle
            process.terminate()
            process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--database-url", help="an EMPTY database (default: a new SQLite file in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, token = load_timed(args.database_url, tmp)
        asyncio.run(bench(url, token, args.rounds, args.requests, args.concurrency))


if __name__ == "__main__":
    main()

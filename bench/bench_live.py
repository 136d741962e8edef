"""Breach-to-subscriber latency of quotaThresholdBreached, next to a bare Starlette broadcast.

    .venv/bin/python bench/bench_live.py [--subscribers 1,100,1000] [--events 10]
        [--database-url URL] [--redis-url redis://127.0.0.1:6379/0]

For each subscriber count it measures, in the same run:

- one process: uvicorn with uidhub (in-process bus); the breach is committed
  through that process's HTTP API and every subscriber is on it;
- two workers: two uvicorn processes over the same database with Redis; the
  breach is committed through process 1, every subscriber is on process 2;
- baseline: a bare Starlette websocket endpoint (another uvicorn process) that
  broadcasts the same bytes (a recorded `next` message) to the same number of
  clients when told over HTTP.

Latency is from just before the HTTP request that commits the breach (or asks
the baseline to broadcast) to each subscriber's receipt of the message; p50
and p99 are over all subscribers and events. The figure that matters is the
ratio to the baseline. All clients live in this process (one event loop), the
same for uidhub and the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------- the baseline server


def baseline_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    clients: set[WebSocket] = set()

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="graphql-transport-ws")
        clients.add(websocket)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            clients.discard(websocket)

    async def broadcast(request: Request) -> PlainTextResponse:
        data = (await request.body()).decode()
        await asyncio.gather(*(c.send_text(data) for c in list(clients)), return_exceptions=True)
        return PlainTextResponse(str(len(clients)))

    async def readyz(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ready")

    return Starlette(
        routes=[WebSocketRoute("/ws", ws), Route("/broadcast", broadcast, methods=["POST"]), Route("/readyz", readyz)]
    )


# ---------------------------------------------------------------- measuring


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def open_clients(address: str, path: str, n: int, token: str | None) -> list[Any]:
    from websockets.asyncio.client import connect

    from tests.support.live import PROTOCOL, WsClient

    clients: list[Any] = []
    for start in range(0, n, 50):
        batch = range(start, min(n, start + 50))
        conns = await asyncio.gather(
            *(
                connect(
                    f"ws://{address}{path}",
                    subprotocols=[PROTOCOL],
                    open_timeout=60,  # type: ignore[list-item]
                    max_queue=None,
                )
                for _ in batch
            )
        )
        clients.extend(WsClient(c) for c in conns)
    if token is not None:
        await asyncio.gather(
            *(c.send({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}) for c in clients)
        )
        acks = await asyncio.gather(*(c.receive(60) for c in clients))
        assert all(a["type"] == "connection_ack" for a in acks)
    return clients


async def receipt(client: Any) -> tuple[float, str]:
    raw = await asyncio.wait_for(client.ws.recv(), 60)
    return time.monotonic(), raw


async def measure_uidhub(
    write: str, read: str, token: str, n: int, events: int, prefix: str
) -> tuple[list[float], str]:
    from tests.support.live import BREACHES, gql, latest_ids, link_over_http

    clients = await open_clients(read, "/graphql", n, token)
    # afterId = the newest stored event: no race between a subscription's first read and the first breach.
    after = (await latest_ids(write, token))["alerts"]
    await asyncio.gather(*(c.subscribe("b", BREACHES, {"afterId": after}) for c in clients))
    latencies: list[float] = []
    sample = ""
    for i in range(-1, events):  # event -1 warms up (every subscription has started), not measured
        uid = f"{prefix}-{n}-{i}"
        await link_over_http(write, token, uid)
        await gql(
            write,
            token,
            "mutation($u: String!) { setWarningThreshold(input: {uid: $u, percent: 50}) { userErrors { code } } }",
            {"u": uid},
        )
        waiting = [asyncio.create_task(receipt(c)) for c in clients]
        started = time.monotonic()
        await gql(
            write,
            token,
            'mutation($u: String!) { recordConsumption(input: {uid: $u, amount: "60.00", '
            "idempotencyKey: $u}) { userErrors { code } } }",
            {"u": uid},
        )
        for arrived, raw in await asyncio.gather(*waiting):
            message = json.loads(raw)
            assert message["type"] == "next", raw
            assert message["payload"]["data"]["quotaThresholdBreached"]["account"]["uid"] == uid, raw
            if i >= 0:
                latencies.append(arrived - started)
            sample = raw
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return latencies, sample


async def measure_baseline(address: str, n: int, events: int, payload: str) -> list[float]:
    import httpx

    clients = await open_clients(address, "/ws", n, None)
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(events):
            waiting = [asyncio.create_task(receipt(c)) for c in clients]
            started = time.monotonic()
            response = await http.post(f"http://{address}/broadcast", content=payload.encode())
            assert int(response.text) == n
            for arrived, raw in await asyncio.gather(*waiting):
                assert raw == payload
                latencies.append(arrived - started)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return latencies


# ---------------------------------------------------------------- setup


async def prepare(database_url: str) -> str:
    from tests.support.api import make_partner, make_token
    from uidhub.db import Database
    from uidhub.models.enums import Role

    db = Database(database_url)
    try:
        partner = await make_partner(db, f"P-BENCH-{os.getpid()}-{time.monotonic_ns()}")
        return await make_token(db, partner, Role.ADMIN)
    finally:
        await db.dispose()


def fmt(values: list[float]) -> str:
    return f"p50 {pct(values, 50) * 1000:8.1f} ms  p99 {pct(values, 99) * 1000:8.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", default="1,100,1000")
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--redis-url", default=os.environ.get("UIDHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    counts = [int(x) for x in args.subscribers.split(",")]

    from tests.support.live import ServerProcess
    from uidhub.migrate import upgrade_sync

    tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
    url = args.database_url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    if args.database_url is None:
        await asyncio.to_thread(upgrade_sync, url)  # alembic runs its own event loop
    token = await prepare(url)
    base_env = {"UIDHUB_DATABASE_URL": url, "UIDHUB_EXPORT_DIR": str(tmp / "exports"), "UIDHUB_RESYNC_SECONDS": "5"}
    single = ServerProcess(base_env)
    worker1 = ServerProcess({**base_env, "UIDHUB_REDIS_URL": args.redis_url})
    worker2 = ServerProcess({**base_env, "UIDHUB_REDIS_URL": args.redis_url})
    baseline = _baseline_process()
    servers = [single, worker1, worker2, baseline]
    try:
        for server in servers:
            await server.wait_ready()
        print(
            f"database {url.split('://')[0]}, {args.events} events per row; latency from the committing request "
            "to each subscriber's receipt"
        )
        print(f"{'subscribers':>11}  {'setup':<26} {'latency':<34} ratio p50 / p99 to baseline")
        for n in counts:
            events = args.events if n < 1000 else max(3, args.events // 2)
            one, sample = await measure_uidhub(single.address, single.address, token, n, events, "one")
            two, _ = await measure_uidhub(worker1.address, worker2.address, token, n, events, "two")
            bare = await measure_baseline(baseline.address, n, events, sample)
            for name, values in (
                ("uidhub, one process", one),
                ("uidhub, 2 workers + Redis", two),
                ("bare Starlette broadcast", bare),
            ):
                ratio = f"{pct(values, 50) / pct(bare, 50):6.1f}x / {pct(values, 99) / pct(bare, 99):6.1f}x"
                print(f"{n:>11}  {name:<26} {fmt(values):<34} {ratio}", flush=True)
    finally:
        for server in servers:
            server.stop()


def _baseline_process() -> Any:
    from tests.support.live import ServerProcess

    server = ServerProcess.__new__(ServerProcess)
    import subprocess

    from tests.support.net import free_port

    server.port = free_port()
    server.address = f"127.0.0.1:{server.port}"
    server.process = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(server.port)], cwd=ROOT)
    return server


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--baseline-server":
        import uvicorn

        uvicorn.run(baseline_app(), host="127.0.0.1", port=int(sys.argv[2]), loop="asyncio", log_level="warning")
    else:
        asyncio.run(main())

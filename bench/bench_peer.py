"""Benchmark: uidhub against PostGraphile v4 and a plain Starlette + SQL route, same data, same load generator.

    .venv/bin/python bench/bench_peer.py [--rounds 5] [--seconds 5] [--concurrency 16]
        [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres] [--no-postgraphile]

In one run: a temporary PostgreSQL database gets 10,000 accounts (bench_end_users.load: 4,000 masters,
6,000 sub-accounts, one partner) and a second database is created from it as a template, for
PostGraphile. Three servers, each one process pinned to the first core (taskset), serve them:

* uidhub: `uvicorn uidhub.asgi:app`, one worker, rate limits off, no Redis;
* PostGraphile v4: `npx -y postgraphile@4` on the copy (npx fetches it into its cache at run time; nothing
  of it is kept in the repository). Skipped with a message when npx is missing or it does not start;
* plain: a Starlette route per shape running the same SQL through SQLAlchemy Core `text()` and returning
  JSON built in Python, one uvicorn worker.

The load generator (tests/support/loadgen.py) runs on the second core: 16 keep-alive connections for
`--seconds` per measurement, measurements interleaved over `--rounds` rounds. Printed: req/s medians,
server CPU ms per request (from /proc), and the ratios uidhub / PostGraphile and uidhub / plain, for:

1. the list page: 100 accounts (masters, by available quota) with quota, policy and sub-accounts;
2. a flat list of 100 x 5 scalars (uid, nickname, status, link time, business manager);
3. recordConsumption (a new idempotency key per call) vs a plain route running the same atomic UPDATE.

Each server's answer is checked before measuring: the same 100 UIDs in the same order from all three.
PostGraphile's names come from its inflection of the tables: `allAccountListings` (the listing table that
uidhub's list reads), `accountByAccountId`, `quotaPoolByPoolId`, `accountsByMasterId`, `accountByMasterId`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from bench_metrics import LIST_PAGE  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from tests.support.loadgen import (  # noqa: E402
    SERVER_CORE,
    Load,
    interleaved,
    pinned,
    rss_mib,
    stop_process,
    tree_pids,
)
from tests.support.net import free_port  # noqa: E402

# ---------------------------------------------------------------- the three shapes

#: README.md's list page (bench_metrics.LIST_PAGE) with a page of 100.
UIDHUB_LIST = LIST_PAGE.replace("endUsers(first: 10,", "endUsers(first: 100,")

#: The same selection in PostGraphile's schema. The derived values uidhub computes (available, warning level,
#: effective freeze) are read as the columns they are computed from: the same rows, a few more scalars.
POSTGRAPHILE_LIST = """query($partner: BigInt!) {
  allAccountListings(first: 100, condition: {partnerId: $partner, masterId: null},
                     orderBy: [AVAILABLE_CENTS_ASC, UID_ASC]) {
    totalCount
    pageInfo { hasNextPage endCursor }
    nodes {
      availableCents belowWarning frozen
      accountByAccountId {
        uid nickname status businessManager
        quotaPoolByPoolId { amountCents warningPercent shutdownPolicy creditControlStatus }
        accountsByMasterId(orderBy: UID_ASC) { nodes { uid nickname } }
      }
    }
  }
}"""

UIDHUB_FLAT = "{ endUsers(first: 100) { edges { node { uid nickname accountStatus linkedAt businessManager } } } }"

POSTGRAPHILE_FLAT = """query($partner: BigInt!) {
  allAccountListings(first: 100, condition: {partnerId: $partner}, orderBy: [LINKED_AT_DESC, UID_DESC]) {
    nodes { accountByAccountId { uid nickname status linkedAt businessManager } }
  }
}"""

#: The idempotency key travels as a variable, as a client library sends it: one document for every call, so
#: its parse and validation are cached (a key written into the document makes every call a new document).
RECORD = (
    "mutation($key: String!) { recordConsumption(input: "
    '{uid: "1000000000000000", amount: "0.01", idempotencyKey: $key}) '
    "{ quota { consumedUndeducted available } userErrors { code } } }"
)
#: The request body; the load generator makes `{seq}` unique per request.
RECORD_BODY = json.dumps({"query": RECORD, "variables": {"key": "k-{seq}"}})

LIST_SQL = """
SELECT a.id, a.uid, a.nickname, a.status, a.business_manager, a.payg_freeze, m.payg_freeze AS master_freeze,
       p.amount_cents, p.deducted_cents, p.undeducted_cents, p.warning_percent, p.shutdown_policy,
       p.credit_control_status, l.available_cents, l.uid AS sort_uid
FROM account_listing l
JOIN accounts a ON a.id = l.account_id
JOIN quota_pools p ON p.id = l.pool_id
LEFT JOIN accounts m ON m.id = l.master_id
WHERE l.partner_id = :partner AND l.master_id IS NULL AND l.status <> 'DELETED'
ORDER BY l.available_cents, l.uid
LIMIT 101
"""
COUNT_SQL = "SELECT coalesce(sum(owners), 0) FROM partner_account_counters WHERE partner_id = :partner"
SUBS_SQL = "SELECT master_id, uid, nickname FROM accounts WHERE master_id = ANY(:ids) ORDER BY master_id, uid"
FLAT_SQL = """
SELECT a.uid, a.nickname, a.status, a.linked_at, a.business_manager
FROM account_listing l JOIN accounts a ON a.id = l.account_id
WHERE l.partner_id = :partner AND l.status <> 'DELETED'
ORDER BY l.linked_at DESC, l.uid DESC
LIMIT 100
"""
CONSUME_SQL = (
    "UPDATE quota_pools SET undeducted_cents = undeducted_cents + :d WHERE id = :id "
    "RETURNING amount_cents, deducted_cents, undeducted_cents"
)


# ---------------------------------------------------------------- the plain server (child process)


def plain_app(url: str, partner_id: int, pool_id: int) -> Any:
    """One route per shape: the SQL above through SQLAlchemy Core, the same JSON built in Python."""
    from sqlalchemy import bindparam, text
    from sqlalchemy.dialects.postgresql import ARRAY, BIGINT
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from uidhub.db import Database
    from uidhub.models import rules
    from uidhub.models.money import format_money

    db = Database(url)
    list_sql, count_sql, flat_sql = text(LIST_SQL), text(COUNT_SQL), text(FLAT_SQL)
    subs_sql = text(SUBS_SQL).bindparams(bindparam("ids", type_=ARRAY(BIGINT)))
    consume_sql = text(CONSUME_SQL)

    async def list_page(_request: Request) -> JSONResponse:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(list_sql, {"partner": partner_id})).mappings().all()
            total = int((await conn.execute(count_sql, {"partner": partner_id})).scalar_one())
            page = rows[:100]
            subs: dict[int, list[dict[str, Any]]] = {}
            for sub in (await conn.execute(subs_sql, {"ids": [r["id"] for r in page]})).mappings():
                subs.setdefault(sub["master_id"], []).append({"uid": sub["uid"], "nickname": sub["nickname"]})
        edges = []
        for r in page:
            available = r["amount_cents"] - r["deducted_cents"] - r["undeducted_cents"]
            level = rules.warning_level(r["amount_cents"], r["warning_percent"])
            frozen = "FROZEN" in (r["payg_freeze"], r["master_freeze"])
            edges.append(
                {
                    "node": {
                        "uid": r["uid"],
                        "nickname": r["nickname"],
                        "accountStatus": r["status"],
                        "businessManager": r["business_manager"],
                        "quota": {
                            "amount": format_money(r["amount_cents"]),
                            "available": format_money(available),
                            "warningLevel": None if level is None else format_money(level),
                            "belowWarningLevel": rules.below_warning(
                                available, r["amount_cents"], r["warning_percent"]
                            ),
                        },
                        "policy": {
                            "effectivePaygFreezeStatus": "FROZEN" if frozen else "NORMAL",
                            "shutdownPolicy": r["shutdown_policy"],
                            "creditControlStatus": r["credit_control_status"],
                        },
                        "subAccounts": subs.get(r["id"], []),
                    }
                }
            )
        last = page[-1] if page else None
        page_info = {"hasNextPage": len(rows) > 100, "endCursor": None if last is None else last["sort_uid"]}
        return JSONResponse({"data": {"endUsers": {"totalCount": total, "pageInfo": page_info, "edges": edges}}})

    async def flat(_request: Request) -> JSONResponse:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(flat_sql, {"partner": partner_id})).all()
        nodes = [
            {"uid": u, "nickname": n, "accountStatus": s, "linkedAt": at.isoformat(), "businessManager": bm}
            for u, n, s, at, bm in rows
        ]
        return JSONResponse({"data": {"endUsers": {"edges": [{"node": node} for node in nodes]}}})

    async def consume(request: Request) -> JSONResponse:
        await request.body()
        async with db.session(write=True) as session:
            amount, deducted, undeducted = (await session.execute(consume_sql, {"d": 1, "id": pool_id})).one()
            await session.commit()
        return JSONResponse(
            {"undeducted": format_money(undeducted), "available": format_money(amount - deducted - undeducted)}
        )

    async def healthz(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/list", list_page, methods=["GET", "POST"]),
            Route("/flat", flat, methods=["GET", "POST"]),
            Route("/consume", consume, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )


def serve_plain(url: str, port: int, partner_id: int, pool_id: int) -> None:
    import logging

    import uvicorn

    logging.disable(logging.WARNING)
    uvicorn.run(plain_app(url, partner_id, pool_id), host="127.0.0.1", port=port, log_level="error", access_log=False)


# ---------------------------------------------------------------- databases


async def admin_exec(admin_url: str, *statements: str) -> None:
    import asyncpg

    u = make_url(admin_url)
    conn = await asyncpg.connect(
        host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres", database=u.database
    )
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def prepare(url: str) -> tuple[str, int, int]:
    """10,000 accounts; (ADMIN token, partner id, pool id of the account recordConsumption charges)."""
    from bench_end_users import load  # the 10k-account loader of the list benchmark
    from sqlalchemy import select

    from uidhub.db import Database
    from uidhub.models import Account, Partner

    token = await load(url)
    db = Database(url)
    try:
        async with db.engine.connect() as conn:  # statistics, as autovacuum would gather: plans as in production
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("ANALYZE")
        async with db.read() as session:
            partner_id = int(await session.scalar(select(Partner.id).where(Partner.uid == "BENCH")) or 0)
            pool_id = int(await session.scalar(select(Account.pool_id).where(Account.uid == "1000000000000000")) or 0)
    finally:
        await db.dispose()
    return token, partner_id, pool_id


def libpq_url(url: str) -> str:
    u = make_url(url)
    return f"postgres://{u.username or 'postgres'}@{u.host or '127.0.0.1'}:{u.port or 5432}/{u.database}"


# ---------------------------------------------------------------- servers


class Server:
    def __init__(self, name: str, command: list[str], env: dict[str, str], health: str) -> None:
        self.name = name
        self.health = health
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-peer-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            pinned(command, SERVER_CORE), env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_up(self, timeout: float) -> bool:
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    await client.request("GET", self.health)
                    return True
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
        return False

    def tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-1500:]

    def stop(self) -> None:
        # npx runs node as a child: stopping npx alone left PostGraphile serving after the benchmark ended.
        children = [pid for pid in tree_pids(self.process.pid) if pid != self.process.pid]
        stop_process(self.process)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        Path(self.log.name).unlink(missing_ok=True)


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("UIDHUB_")}


def uidhub_env(url: str, **settings: str) -> dict[str, str]:
    """The environment of a benchmarked uidhub: its database, rate limits off, no Redis; `settings` on top."""
    env = base_env()
    env.update(
        UIDHUB_DATABASE_URL=url,
        UIDHUB_EXPORT_DIR=tempfile.mkdtemp(prefix="bench-uidhub-exports-"),
        UIDHUB_RATE_LIMIT_TOKEN_PER_SECOND="0",
        UIDHUB_RATE_LIMIT_IP_PER_SECOND="0",
        UIDHUB_GRAPHIQL="false",
        **settings,
    )
    return env


def start_uidhub(url: str, port: int) -> Server:
    env = uidhub_env(url)
    command = [sys.executable, "-m", "uvicorn", "uidhub.asgi:app", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--log-level", "error", "--no-access-log"]
    return Server("uidhub", command, env, f"http://127.0.0.1:{port}/healthz")


def start_plain(url: str, port: int, partner_id: int, pool_id: int) -> Server:
    command = [sys.executable, __file__, "--serve-plain", url, str(port), str(partner_id), str(pool_id)]
    return Server("plain", command, base_env(), f"http://127.0.0.1:{port}/healthz")


def start_postgraphile(url: str, port: int) -> Server:
    command = ["npx", "-y", "postgraphile@4", "-c", libpq_url(url), "--schema", "public"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--disable-query-log", "--disable-graphiql"]
    env = base_env()
    env["NODE_ENV"] = "production"
    return Server("postgraphile", command, env, f"http://127.0.0.1:{port}/graphql")


# ---------------------------------------------------------------- checks


async def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(url, json=body, headers=headers)
        response.raise_for_status()
        return response.json()


async def check_answers(
    gql: str, plain: str, pg: str | None, token: str, partner_id: int
) -> tuple[list[str], list[str]]:
    """The same 100 UIDs in the same order from every server, for both lists; printed sizes."""
    auth = {"Authorization": f"Bearer {token}"}
    ours = await post(gql, {"query": UIDHUB_LIST}, auth)
    assert "errors" not in ours, ours
    list_uids = [e["node"]["uid"] for e in ours["data"]["endUsers"]["edges"]]
    plain_list = await post(plain + "/list", {})
    assert [e["node"]["uid"] for e in plain_list["data"]["endUsers"]["edges"]] == list_uids
    assert plain_list["data"]["endUsers"]["edges"] == ours["data"]["endUsers"]["edges"], "plain list differs"
    flat = await post(gql, {"query": UIDHUB_FLAT}, auth)
    flat_uids = [e["node"]["uid"] for e in flat["data"]["endUsers"]["edges"]]
    plain_flat = await post(plain + "/flat", {})
    assert plain_flat["data"]["endUsers"]["edges"] == flat["data"]["endUsers"]["edges"], "plain flat differs"
    print(f"list page: {len(json.dumps(ours))} bytes uidhub; flat list: {len(json.dumps(flat))} bytes uidhub")
    if pg is not None:
        variables = {"partner": str(partner_id)}
        theirs = await post(pg, {"query": POSTGRAPHILE_LIST, "variables": variables})
        assert "errors" not in theirs, theirs
        nodes = theirs["data"]["allAccountListings"]["nodes"]
        assert [n["accountByAccountId"]["uid"] for n in nodes] == list_uids, "PostGraphile list differs"
        subs = [[s["uid"] for s in n["accountByAccountId"]["accountsByMasterId"]["nodes"]] for n in nodes]
        assert subs == [[s["uid"] for s in e["node"]["subAccounts"]] for e in ours["data"]["endUsers"]["edges"]]
        theirs_flat = await post(pg, {"query": POSTGRAPHILE_FLAT, "variables": variables})
        assert "errors" not in theirs_flat, theirs_flat
        pg_flat = [n["accountByAccountId"]["uid"] for n in theirs_flat["data"]["allAccountListings"]["nodes"]]
        assert pg_flat == flat_uids, "PostGraphile flat list differs"
        print(f"PostGraphile: list page {len(json.dumps(theirs))} bytes, flat list {len(json.dumps(theirs_flat))}")
    return list_uids, flat_uids


# ---------------------------------------------------------------- main


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


async def run(args: argparse.Namespace) -> None:
    name = f"uidhub_peer_{uuid.uuid4().hex[:8]}"
    copy = name + "_pg"
    base = make_url(args.postgres_url)
    url = base.set(database=name).render_as_string(hide_password=False)
    copy_url = base.set(database=copy).render_as_string(hide_password=False)
    await admin_exec(args.postgres_url, f'CREATE DATABASE "{name}"')
    servers: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    try:
        started = time.perf_counter()
        token, partner_id, pool_id = await prepare(url)
        await admin_exec(args.postgres_url, f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
        print(f"loaded 10,000 accounts into {name} (and its copy {copy}) in {time.perf_counter() - started:.1f} s")

        ports = {"uidhub": free_port(), "plain": free_port(), "postgraphile": free_port()}
        uidhub = start_uidhub(url, ports["uidhub"])
        plain = start_plain(url, ports["plain"], partner_id, pool_id)
        servers += [uidhub, plain]
        postgraphile: Server | None = None
        if args.no_postgraphile:
            print("PostGraphile: skipped (--no-postgraphile)")
        elif shutil.which("npx") is None:
            print("PostGraphile: skipped (npx is not installed; install Node.js to compare with it)")
        else:
            postgraphile = start_postgraphile(copy_url, ports["postgraphile"])
            servers.append(postgraphile)
        for server in (uidhub, plain):
            if not await server.wait_up(60):
                raise SystemExit(f"{server.name} did not start:\n{server.tail()}")
        if postgraphile is not None and not await postgraphile.wait_up(300):  # npx may download it first
            print(f"PostGraphile: skipped (did not start):\n{postgraphile.tail()}")
            postgraphile.stop()
            servers.remove(postgraphile)
            postgraphile = None

        gql = f"http://127.0.0.1:{ports['uidhub']}/graphql"
        plain_base = f"http://127.0.0.1:{ports['plain']}"
        pg = f"http://127.0.0.1:{ports['postgraphile']}/graphql" if postgraphile else None
        try:
            await check_answers(gql, plain_base, pg, token, partner_id)
        except Exception:
            for server in servers:
                print(f"---- {server.name} log\n{server.tail()}")
            raise

        auth = [f"Authorization: Bearer {token}"]
        variables = {"partner": str(partner_id)}
        shapes: dict[str, list[Load]] = {
            "list page": [
                Load("uidhub list page", ports["uidhub"], "/graphql", json.dumps({"query": UIDHUB_LIST}), auth),
                Load("plain list page", ports["plain"], "/list", "{}"),
            ],
            "flat list": [
                Load("uidhub flat list", ports["uidhub"], "/graphql", json.dumps({"query": UIDHUB_FLAT}), auth),
                Load("plain flat list", ports["plain"], "/flat", "{}"),
            ],
            "recordConsumption": [
                Load("uidhub recordConsumption", ports["uidhub"], "/graphql", RECORD_BODY, auth),
                Load("plain UPDATE", ports["plain"], "/consume", "{}"),
            ],
        }
        if postgraphile is not None:
            shapes["list page"].append(
                Load(
                    "PostGraphile list page",
                    ports["postgraphile"],
                    "/graphql",
                    json.dumps({"query": POSTGRAPHILE_LIST, "variables": variables}),
                )
            )
            shapes["flat list"].append(
                Load(
                    "PostGraphile flat list",
                    ports["postgraphile"],
                    "/graphql",
                    json.dumps({"query": POSTGRAPHILE_FLAT, "variables": variables}),
                )
            )
        for load in (load for loads in shapes.values() for load in loads):
            load.pid = {"uidhub": uidhub.pid, "plain": plain.pid}.get(load.name.split()[0])
            if load.name.startswith("PostGraphile") and postgraphile is not None:
                load.pid = postgraphile.pid
        every = [load for loads in shapes.values() for load in loads]
        print(
            f"{args.rounds} interleaved rounds of {args.seconds:g} s per measurement, {args.concurrency} connections; "
            f"servers on core {SERVER_CORE}, load generator on another"
        )
        medians = interleaved(every, rounds=args.rounds, seconds=args.seconds, concurrency=args.concurrency, tmp=tmp)
        print()
        print(f"{'median':<30} {'req/s':>9} {'CPU ms/req':>11}")
        for load in every:
            m = medians[load.name]
            print(f"{load.name:<30} {m['rps']:9.1f} {m.get('cpu_ms', float('nan')):11.2f}  non-2xx {m['non_2xx']:.0f}")
        print()
        for shape, loads in shapes.items():
            ours = medians[loads[0].name]["rps"]
            line = f"{shape:<18} uidhub/plain {ratio(ours, medians[loads[1].name]['rps'])}"
            if len(loads) > 2:
                line += f"   uidhub/PostGraphile {ratio(ours, medians[loads[2].name]['rps'])}"
            print(line)
        print(f"RSS after the run: uidhub {rss_mib(uidhub.pid):.0f} MiB, plain {rss_mib(plain.pid):.0f} MiB")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        await asyncio.sleep(0.5)
        await admin_exec(
            args.postgres_url,
            f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)',
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-plain":
        serve_plain(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-postgraphile", action="store_true", help="compare with the plain routes only")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

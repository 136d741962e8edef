"""Benchmark: the mixed-writer burst on one master, PostgreSQL, this tree against a baseline revision.

    .venv/bin/python bench/bench_contention.py [--clients 20] [--rounds 30] [--runs 2]
        [--baseline-rev 273843f] [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]

The burst (tests/support/contention.mixed_writers): per round one each of
updateBasicInfo, setQuotaAmount, setWarningThreshold, freezePayg/unfreezePayg
of the master and one recordConsumption of the master or a sub-account, all
from `--clients` concurrent HTTP clients. For each tree, in the same run:
uvicorn (one worker, a loopback port, its own process) serves a fresh
temporary PostgreSQL database; the burst is sent `--runs` times (a new master
each time). Printed per tree: calls/s (all calls, answered or not), p50 and
p99 latency of a call, how many calls got an error (INTERNAL_SERVER_ERROR,
SERVICE_UNAVAILABLE / 503) and the ratio of this tree to the baseline.

The baseline tree is a temporary `git worktree` of `--baseline-rev` (the
commit before issue 9's fix by default), served with the same virtualenv
(PYTHONPATH puts its packages first) and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from tests.support import contention as C  # noqa: E402
from tests.support.net import free_port  # noqa: E402


@contextlib.contextmanager
def baseline_tree(rev: str) -> Iterator[Path]:
    """A detached worktree of `rev` in a temporary directory, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="uidhub-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


async def admin_exec(admin_url: str, sql: str) -> None:
    import asyncpg

    url = make_url(admin_url)
    conn = await asyncpg.connect(
        user=url.username or "postgres",
        password=url.password,
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        database="postgres",
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fresh_database(admin_url: str) -> tuple[str, str, str]:
    """A migrated database with a partner and an ADMIN token; (name, url, token)."""
    from tests.support.api import make_partner, make_token
    from uidhub.db import Database
    from uidhub.migrate import upgrade

    name = f"uidhub_bench_{uuid.uuid4().hex[:10]}"
    await admin_exec(admin_url, f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    await upgrade(url)
    db = Database(url)
    try:
        token = await make_token(db, await make_partner(db, "BENCH"))
    finally:
        await db.dispose()
    return name, url, token


class Server:
    """uvicorn serving `tree`'s `uidhub.asgi:app` over `url` in a process of its own."""

    def __init__(self, tree: Path, url: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("UIDHUB_")}
        env.update(
            {
                "UIDHUB_DATABASE_URL": url,
                "UIDHUB_REDIS_URL": "",
                "PYTHONPATH": str(tree),
                "UIDHUB_EXPORT_DIR": tempfile.mkdtemp(prefix="uidhub-bench-exports-"),
            }
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "uidhub.asgi:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--loop",
                "asyncio",
                "--log-level",
                "critical",
            ],
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base_url = f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(600):
                assert self.process.poll() is None, "server exited"
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base_url}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise TimeoutError("server did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def measure(tree: Path, admin_url: str, clients: int, rounds: int, runs: int) -> dict[str, Any]:
    name, url, token = await fresh_database(admin_url)
    server = Server(tree, url)
    try:
        await server.ready()
        seconds: list[float] = []
        wall = 0.0
        calls = internal = unavailable = 0
        for run in range(runs):
            master = f"M{run}"
            subs = [f"{master}-S1", f"{master}-S2"]
            await C.setup_family(server.base_url, token, master, subs, "1000.00")
            burst = C.mixed_writers(master, rounds, subs)
            started = time.perf_counter()
            answers = await C.fire([server.base_url], token, burst, clients)
            wall += time.perf_counter() - started
            calls += len(answers)
            seconds += [a.seconds for a in answers]
            internal += sum("INTERNAL_SERVER_ERROR" in a.codes for a in answers)
            unavailable += sum(a.status == 503 or "SERVICE_UNAVAILABLE" in a.codes for a in answers)
    finally:
        server.stop()
        await admin_exec(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    ordered = sorted(seconds)
    return {
        "calls": calls,
        "throughput": calls / wall,
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "internal": internal,
        "unavailable": unavailable,
    }


def show(label: str, figures: dict[str, Any]) -> None:
    print(
        f"{label:<28} {figures['throughput']:8.1f} calls/s   p50 {figures['p50'] * 1000:7.1f} ms   "
        f"p99 {figures['p99'] * 1000:7.1f} ms   internal errors {figures['internal']:4d}   "
        f"503 {figures['unavailable']:4d}   of {figures['calls']}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30, help="rounds of five calls per burst")
    parser.add_argument("--runs", type=int, default=2, help="bursts per tree")
    parser.add_argument("--baseline-rev", default="273843f")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("UIDHUB_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()

    print(
        f"mixed writers on one master: {args.clients} clients, {args.rounds * 5} calls per burst, "
        f"{args.runs} bursts per tree, PostgreSQL, one uvicorn worker each"
    )
    with baseline_tree(args.baseline_rev) as old_tree:
        before = await measure(old_tree, args.postgres_url, args.clients, args.rounds, args.runs)
        after = await measure(ROOT, args.postgres_url, args.clients, args.rounds, args.runs)
    show(f"before ({args.baseline_rev})", before)
    show("after (this tree)", after)
    print(
        f"ratio after/before: throughput {after['throughput'] / before['throughput']:.2f}x, "
        f"p99 {after['p99'] / before['p99']:.2f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())

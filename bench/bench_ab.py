"""Benchmark: the same `/graphql` requests on two versions of uidhub, interleaved, on one database.

A change's speed-up measured against its own baseline in the same run (the machine is shared and noisy):
the database is built once (with this checkout's `bench_scale.build`), then two worker processes -- this
tree, and a temporary `git worktree` of `--baseline-rev` (bench_contention.baseline_tree, its packages
mapped by tests.support.servetree.TreeFinder, this virtualenv) -- answer the same query in alternating
rounds (A B, B A, ...), `--per-round` requests each, in-process over ASGI. Prints each side's median and
the median (and range) of the per-round ratios new/old.

    .venv/bin/python bench/bench_ab.py --baseline-rev REV [--database sqlite|postgres] [--accounts 10000]
        [--rounds 7] [--per-round 5] [--shape "search nickname substring" ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

DEFAULT_SHAPES = ["search nickname substring", "search UID prefix", "filter masters only", "default order"]


def use_tree(tree: Path) -> None:
    """Import uidhub's five packages from `tree` in this process (a worker), and check that they come from it."""
    from tests.support.servetree import TreeFinder

    sys.meta_path.insert(0, TreeFinder(tree))
    import uidhub.resolvers

    assert Path(uidhub.resolvers.__file__ or "").resolve().is_relative_to(tree.resolve()), uidhub.resolvers.__file__


async def worker(url: str, token: str) -> None:
    """Answer `count<TAB>query` lines from stdin with a JSON list of request times (ms)."""
    import httpx

    from uidhub.app import create_app
    from uidhub.db import Database
    from uidhub.settings import Settings

    db = Database(url)
    app = create_app(Settings(database_url=url, export_dir=tempfile.mkdtemp()), db=db)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ab", timeout=600) as client:
        for line in sys.stdin:
            count, query = line.rstrip("\n").split("\t", 1)
            times = []
            for _ in range(int(count)):
                started = time.perf_counter()
                body = (await client.post("/graphql", json={"query": query}, headers=headers)).json()
                times.append((time.perf_counter() - started) * 1000)
                if "errors" in body:
                    raise SystemExit(f"errors: {body['errors']}")
            print(json.dumps(times), flush=True)
    await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--baseline-rev", help="the revision to compare with (a git worktree of it is made)")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--shape", action="append", help="a bench_scale shape name (repeatable)")
    parser.add_argument("--worker", nargs=3, metavar=("TREE", "URL", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tree, url, token = args.worker
        use_tree(Path(tree))
        asyncio.run(worker(url, token))
        return
    if args.baseline_rev is None:
        parser.error("--baseline-rev is required")
    import bench_scale
    from bench_contention import admin_exec, baseline_tree
    from sqlalchemy.engine import make_url

    shapes = dict(bench_scale.shapes(""))
    name = f"uidhub_ab_{uuid.uuid4().hex[:8]}"
    postgres = args.database == "postgres"
    with tempfile.TemporaryDirectory(prefix="uidhub-bench-ab-") as tmp, baseline_tree(args.baseline_rev) as base:
        if postgres:
            url = make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False)
            asyncio.run(admin_exec(args.postgres_url, f'CREATE DATABASE "{name}"'))
        else:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'ab.db'}"
        try:
            token, rate = asyncio.run(bench_scale.build(url, args.accounts, Path(tmp)))
            print(
                f"{args.database}, {args.accounts:,} accounts (import {rate:,.0f} rows/s), baseline {args.baseline_rev}"
            )
            sides = {
                side: subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), url, token],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=tmp,
                )
                for side, tree in (("old", base), ("new", ROOT))
            }
            try:
                for shape in args.shape or DEFAULT_SHAPES:
                    compare(sides, shape, shapes[shape], args.rounds, args.per_round)
            finally:
                for process in sides.values():
                    assert process.stdin is not None
                    process.stdin.close()
                    process.wait()
        finally:
            if postgres:
                asyncio.run(admin_exec(args.postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def compare(sides: dict[str, subprocess.Popen[str]], shape: str, query: str, rounds: int, per_round: int) -> None:
    """Warm both sides up, then `rounds` alternating rounds; print the medians and the per-round ratios."""

    def ask(side: str, count: int) -> list[float]:
        process = sides[side]
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{count}\t{query}\n")
        process.stdin.flush()
        return json.loads(process.stdout.readline())

    for side in sides:
        ask(side, 3)  # caches, prepared statements
    times: dict[str, list[float]] = {"old": [], "new": []}
    ratios = []
    for round_ in range(rounds):
        medians = {}
        for side in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
            got = ask(side, per_round)
            times[side] += got
            medians[side] = statistics.median(got)
        ratios.append(medians["new"] / medians["old"])
    old, new = statistics.median(times["old"]), statistics.median(times["new"])
    print(
        f"{shape:<45} old {old:7.1f} ms  new {new:7.1f} ms  new/old {new / old:.2f}  "
        f"(rounds {statistics.median(ratios):.2f}, {min(ratios):.2f}-{max(ratios):.2f})",
        flush=True,
    )


if __name__ == "__main__":
    main()

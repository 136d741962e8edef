"""Benchmark: issue 11's cheap fixes, each measured alone against the baseline revision, in one run.

    .venv/bin/python bench/bench_fixes.py [--baseline-rev main] [--rounds 5] [--seconds 4] [--concurrency 16]
        [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]

One temporary PostgreSQL database with 10,000 accounts (bench_end_users.load). Five uidhub servers
(`uidhub.asgi:app`, one uvicorn worker each, pinned to the first core, rate limits off) serve it:

* base: a temporary `git worktree` of `--baseline-rev` (tests/support/servetree.py maps the packages);
* tree: this tree with both switchable fixes off (UIDHUB_GC_FREEZE=false, UIDHUB_TOKEN_CACHE_SECONDS=0):
  what is left over base is the code-only changes (Quota amounts as plain values; balance operations
  in fewer statements);
* +gc: this tree with gc.freeze() after start-up and the first-generation threshold raised only;
* +token cache: this tree with the token -> actor cache only;
* all: this tree with its defaults (both on).

The load generator (tests/support/loadgen.py, second core) sends the list page (100 masters with quota,
policy and sub-accounts), a flat list of 100 x 5 scalars and recordConsumption to each, interleaved over
`--rounds` rounds. Printed: median req/s and server CPU ms per request per variant and shape, each
variant's ratio to base and to tree (the fix alone), and each server's RSS after start-up and at the end.

`--gc-thresholds 2000,20000,100000` replaces the variants by tree and one +gc variant per first-generation
threshold (token cache off), to choose the threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_contention import baseline_tree  # noqa: E402
from bench_peer import RECORD_BODY, UIDHUB_FLAT, UIDHUB_LIST, Server, admin_exec, post, prepare, uidhub_env  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from tests.support.loadgen import SERVER_CORE, Load, interleaved, rss_mib  # noqa: E402
from tests.support.net import free_port  # noqa: E402

#: (name, tree: None for this one, settings)
VARIANTS: list[tuple[str, bool, dict[str, str]]] = [
    ("base", True, {}),
    ("tree", False, {"UIDHUB_GC_FREEZE": "false", "UIDHUB_TOKEN_CACHE_SECONDS": "0"}),
    ("+gc", False, {"UIDHUB_GC_FREEZE": "true", "UIDHUB_TOKEN_CACHE_SECONDS": "0"}),
    ("+token cache", False, {"UIDHUB_GC_FREEZE": "false"}),
    ("all", False, {}),
]


def gc_variants(thresholds: str) -> list[tuple[str, bool, dict[str, str]]]:
    off = {"UIDHUB_TOKEN_CACHE_SECONDS": "0"}
    variants = [("base", True, {}), ("tree", False, {"UIDHUB_GC_FREEZE": "false", **off})]
    for value in thresholds.split(","):
        variants.append((f"+gc {value}", False, {"UIDHUB_GC_FREEZE": "true", "UIDHUB_GC_GEN0_THRESHOLD": value, **off}))
    return variants


def start(name: str, tree: Path, url: str, port: int, settings: dict[str, str]) -> Server:
    env = uidhub_env(url, **settings)
    command = [sys.executable, "-m", "tests.support.servetree", str(tree), str(port)]
    return Server(name, command, env, f"http://127.0.0.1:{port}/healthz")


async def run(args: argparse.Namespace) -> None:
    variants = gc_variants(args.gc_thresholds) if args.gc_thresholds else VARIANTS
    name = f"uidhub_fixes_{uuid.uuid4().hex[:8]}"
    url = make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False)
    await admin_exec(args.postgres_url, f'CREATE DATABASE "{name}"')
    servers: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-fixes-"))
    try:
        with baseline_tree(args.baseline_rev) as base_tree:
            token, _partner_id, _pool_id = await prepare(url)
            ports = {}
            for variant, is_base, settings in variants:
                ports[variant] = free_port()
                servers.append(start(variant, base_tree if is_base else ROOT, url, ports[variant], settings))
            for server in servers:
                if not await server.wait_up(90):
                    raise SystemExit(f"{server.name} did not start:\n{server.tail()}")
            auth = {"Authorization": f"Bearer {token}"}
            answers = set()
            for variant in ports:
                body = await post(f"http://127.0.0.1:{ports[variant]}/graphql", {"query": UIDHUB_LIST}, auth)
                assert "errors" not in body, (variant, body)
                answers.add(json.dumps(body, sort_keys=True))
            assert len(answers) == 1, "every variant answers the list page byte for byte the same"
            rss_start = {s.name: rss_mib(s.pid) for s in servers}
            header = [f"Authorization: Bearer {token}"]
            shapes = {
                "list page": json.dumps({"query": UIDHUB_LIST}),
                "flat list": json.dumps({"query": UIDHUB_FLAT}),
                "recordConsumption": RECORD_BODY,
            }
            loads = [
                Load(f"{variant} {shape}", ports[variant], "/graphql", body, header, pid=s.pid)
                for shape, body in shapes.items()
                for (variant, _b, _s), s in zip(variants, servers, strict=True)
            ]
            print(
                f"baseline {args.baseline_rev}; {args.rounds} interleaved rounds of {args.seconds:g} s, "
                f"{args.concurrency} connections; servers on core {SERVER_CORE}, load generator on another"
            )
            medians = interleaved(
                loads, rounds=args.rounds, seconds=args.seconds, concurrency=args.concurrency, tmp=tmp
            )
            print()
            for shape in shapes:
                columns = ("rps/base", "rps/tree", "CPU/base", "CPU/tree")
                print(f"{shape}: {'req/s':>9} {'CPU ms':>8} " + " ".join(f"{c:>9}" for c in columns))
                base = medians[f"base {shape}"]
                tree = medians[f"tree {shape}"]
                for variant, _b, _s in variants:
                    m = medians[f"{variant} {shape}"]
                    print(
                        f"  {variant:<14} {m['rps']:9.1f} {m['cpu_ms']:8.2f} {m['rps'] / base['rps']:9.2f} "
                        f"{m['rps'] / tree['rps']:9.2f} {m['cpu_ms'] / base['cpu_ms']:9.2f} "
                        f"{m['cpu_ms'] / tree['cpu_ms']:9.2f}"
                    )
            print()
            print("RSS (MiB) after start-up and one list page -> after the run:")
            for server in servers:
                print(f"  {server.name:<14} {rss_start[server.name]:6.1f} -> {rss_mib(server.pid):6.1f}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        await asyncio.sleep(0.5)
        await admin_exec(args.postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--baseline-rev", default="main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--gc-thresholds", help="comma-separated first-generation thresholds to compare instead")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

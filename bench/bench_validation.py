"""Benchmark: parse + validation time per request, before and after the Limiter (issues 10, 11, 17).

Before (the code up to 273843f): every request parsed its text, and validated it with graphql-core's
rules plus the depth and alias rules that strawberry's QueryDepthLimiter and MaxAliasesLimiter build,
a new rule class per request (so no validation cache could ever hit).

After: schema.limits.Limiter, built once per schema: the parse result and the limit check are cached
by query text, validation is cached by (text, rules) and runs in a worker thread on a miss.

Both are measured in the same run over the same documents:

- a console list query (the endUsers page with a fragment, ~40 fields), repeated: the common case;
- the 22 KB document of 1,240 `viewer { method }` (issue 10): before, validated (seconds);
  after, refused by the selection bound before validation;
- the 13-level fragment fan-out (issue 17) is NOT run the old way (minutes); after, its refusal time.

    .venv/bin/python bench/bench_validation.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphql import parse, specified_rules
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter
from strawberry.schema.schema import validate_document

from schema import build_schema
from schema.limits import MAX_ALIASES, MAX_DEPTH, MAX_TOKENS, Limiter

CONSOLE = """
query Accounts($first: Int, $after: String, $filter: EndUserFilter) {
  endUsers(first: $first, after: $after, filter: $filter) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { cursor node { ...Row } }
  }
  viewer { method partner { uid name kind } }
}
fragment Row on EndUser {
  id uid nickname email accountType accountStatus linkedAt businessManager remarks
  master { uid nickname }
  quota { amount available outstandingAmount warningThresholdPercent warningLevel belowWarningLevel }
  policy { paygFreezeStatus effectivePaygFreezeStatus purchaseControl effectivePurchaseControl }
  subAccounts { uid nickname accountStatus }
}
"""
WIDE = "{ " + " ".join(["viewer { method }"] * 1240) + " }"


def fan_out(levels: int) -> str:
    parts = ["fragment F0 on Viewer { method }"]
    parts += [f"fragment F{i} on Viewer {{ " + " ".join([f"...F{i - 1}"] * 4) + " }" for i in range(1, levels + 1)]
    return f"query {{ viewer {{ ...F{levels} }} }} " + " ".join(parts)


def before(schema: Any, query: str) -> int:
    """One request the old way: parse, then validate with per-request limiter rule classes."""
    document = parse(query, max_tokens=MAX_TOKENS)
    rules = (
        *specified_rules,
        *QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules,
        *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules,
    )
    return len(validate_document(schema, document, rules))


async def after(schema: Any, limiter: Limiter, query: str) -> int:
    """One request the new way: cached parse and limit check, cached validation (in a thread on a miss)."""
    parsed = await limiter.parse(query)
    assert parsed is not None
    if parsed.problem is not None:
        return 1
    return len(await limiter.validate(schema, query, parsed, tuple(specified_rules)))


def timed(fn: Any, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def atimed(fn: Any, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    served = build_schema()
    schema = served._schema
    assert before(schema, CONSOLE) == 0, "the console query validates"

    old = timed(lambda: before(schema, CONSOLE), args.repeat)
    cold_limiter = Limiter()
    cold = await atimed(lambda: after(schema, Limiter(), CONSOLE), max(5, args.repeat // 10))
    await after(schema, cold_limiter, CONSOLE)
    new = await atimed(lambda: after(schema, cold_limiter, CONSOLE), args.repeat)
    print(f"console query, before (parse + validate, fresh limiter rules): {old * 1e3:8.3f} ms/request")
    print(f"console query, after, first time (cache miss):              {cold * 1e3:8.3f} ms/request")
    print(f"console query, after, repeated (parse and validation cached): {new * 1e3:8.3f} ms/request")
    print(f"ratio before/after (repeated): {old / new:.0f}x;  before/after (first time): {old / cold:.2f}x")

    wide_old = timed(lambda: before(schema, WIDE), 3)
    wide_new = await atimed(lambda: after(schema, Limiter(), WIDE), 5)
    print(f"1,240 x viewer {{ method }}: before {wide_old * 1e3:.0f} ms (validated), "
          f"after {wide_new * 1e3:.1f} ms (refused); ratio {wide_old / wide_new:.0f}x")
    fan = await atimed(lambda: after(schema, Limiter(), fan_out(13)), 5)
    print(f"13-level fragment fan-out: after {fan * 1e3:.2f} ms (refused); before: minutes (not run)")


if __name__ == "__main__":
    asyncio.run(main())

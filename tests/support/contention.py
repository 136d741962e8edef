"""Scenarios of ordinary writes racing on one master, sent over real HTTP (the contention tests and bench).

Each scenario is a list of GraphQL calls. `fire` sends them from N clients at
once (each client its own connection, the calls dealt round-robin), and the
checks read the database afterwards: balances against the ledger, the quota
adjustment chain, and the audit chain (every entry's `before` is the previous
entry's `after`, per account and field).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, select, text

from tests.support.accounts import LINK
from uidhub.db import Database
from uidhub.models import Account, AuditEntry, Instance, LedgerEntry, QuotaAdjustment, QuotaPool

ERRORS = "userErrors { code message field }"
QUOTA = f"quota {{ amount consumedUndeducted consumedDeducted available }} {ERRORS}"
INFO = f"mutation($i: UpdateBasicInfoInput!) {{ updateBasicInfo(input: $i) {{ endUser {{ uid nickname }} {ERRORS} }} }}"
SET = f"mutation($i: SetQuotaAmountInput!) {{ setQuotaAmount(input: $i) {{ {QUOTA} }} }}"
THRESHOLD = f"mutation($i: SetWarningThresholdInput!) {{ setWarningThreshold(input: $i) {{ {QUOTA} }} }}"
RECORD = f"mutation($i: AmountInput!) {{ recordConsumption(input: $i) {{ {QUOTA} }} }}"
DEDUCT = f"mutation($i: AmountInput!) {{ deductConsumption(input: $i) {{ {QUOTA} }} }}"
FREEZE_FIELDS = f"applied affectedAccounts {{ uid }} {ERRORS}"
FREEZE = f"mutation($i: FreezeInput!) {{ freezePayg(input: $i) {{ {FREEZE_FIELDS} }} }}"
UNFREEZE = f"mutation($i: FreezeInput!) {{ unfreezePayg(input: $i) {{ {FREEZE_FIELDS} }} }}"
PURCHASE = (
    "mutation($i: SetPurchaseControlInput!) { setPurchaseControl(input: $i) "
    f"{{ endUser {{ uid policy {{ purchaseControl effectivePurchaseControl }} }} {ERRORS} }} }}"
)
ORDER = (
    "mutation($i: PlaceOrderInput!) { placeOrder(input: $i) "
    f"{{ decision {{ allowed reasons availableQuota }} instance {{ id }} {ERRORS} }} }}"
)

#: Audit fields whose history is a chain: each change starts from the value the previous change left.
CHAINED = (
    "amount",
    "warningThresholdPercent",
    "nickname",
    "businessManager",
    "remarks",
    "paygFreezeStatus",
    "effectivePaygFreezeStatus",
    "purchaseControl",
    "effectivePurchaseControl",
    "creditControlStatus",
    "accountStatus",
    "shutdownPolicy",
)

Call = tuple[str, dict[str, Any]]


@dataclass
class Answer:
    """One call's HTTP answer."""

    call: Call
    status: int
    body: dict[str, Any]
    seconds: float

    @property
    def payload(self) -> dict[str, Any]:
        (payload,) = self.body["data"].values()
        return payload

    @property
    def codes(self) -> list[str]:
        return [str((e.get("extensions") or {}).get("code")) for e in self.body.get("errors") or []]


# ---------------------------------------------------------------- sending


async def fire(base_urls: Sequence[str], token: str, calls: Sequence[Call], clients: int) -> list[Answer]:
    """Send `calls` from `clients` concurrent HTTP clients (spread over `base_urls`); answers in call order."""
    answers: list[Answer | None] = [None] * len(calls)
    queues: list[list[int]] = [list(range(n, len(calls), clients)) for n in range(clients)]
    headers = {"Authorization": f"Bearer {token}"}

    async def client(n: int) -> None:
        async with httpx.AsyncClient(base_url=base_urls[n % len(base_urls)], timeout=120) as http:
            for index in queues[n]:
                query, variables = calls[index]
                started = time.perf_counter()
                response = await http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
                elapsed = time.perf_counter() - started
                try:
                    body = response.json()
                except ValueError:
                    body = {"raw": response.text}
                answers[index] = Answer(calls[index], response.status_code, body, elapsed)

    await asyncio.gather(*(client(n) for n in range(clients)))
    return [a for a in answers if a is not None]


def assert_all_answered(answers: Sequence[Answer]) -> None:
    """Every call got a GraphQL answer: HTTP 200, no error (internal or other), its payload present."""
    bad = [(a.status, a.codes, a.body) for a in answers if a.status != 200 or "errors" in a.body]
    assert not bad, f"{len(bad)} of {len(answers)} calls failed, e.g. {bad[:3]}"


def user_error_codes(answers: Sequence[Answer]) -> list[str]:
    return [e["code"] for a in answers for e in a.payload.get("userErrors") or []]


# ---------------------------------------------------------------- scenarios


def _keys(prefix: str) -> Any:
    return (f"{prefix}-{n}" for n in itertools.count())


def mixed_writers(master: str, rounds: int, subs: Sequence[str] = ()) -> list[Call]:
    """updateBasicInfo / setQuotaAmount / setWarningThreshold / freeze-unfreeze / consumption on one master."""
    keys = _keys("mix")
    spenders = [master, *subs]
    calls: list[Call] = []
    for i in range(rounds):
        calls += [
            (INFO, {"i": {"uid": master, "nickname": f"nick-{i}"}}),
            (SET, {"i": {"uid": master, "amount": f"{1000 + i}.00"}}),
            (THRESHOLD, {"i": {"uid": master, "percent": 1 + i % 90}}),
            (UNFREEZE if i % 2 else FREEZE, {"i": {"uids": [master], "confirm": True, "reason": f"r{i}"}}),
            (RECORD, {"i": {"uid": spenders[i % len(spenders)], "amount": "0.01", "idempotencyKey": next(keys)}}),
        ]
    return calls


def quota_vs_consumption(uid: str, adjustments: int, consumptions: int) -> list[Call]:
    keys = _keys("qc")
    calls: list[Call] = [(SET, {"i": {"uid": uid, "amount": f"{500 + i}.00"}}) for i in range(adjustments)]
    calls += [
        (RECORD, {"i": {"uid": uid, "amount": "0.01", "idempotencyKey": next(keys)}}) for _ in range(consumptions)
    ]
    return _interleave(calls, adjustments)


def deductions(uid: str, count: int) -> list[Call]:
    return [(DEDUCT, {"i": {"uid": uid, "amount": "0.01", "idempotencyKey": f"ded-{n}"}}) for n in range(count)]


def orders_and_consumptions(master: str, subs: Sequence[str], orders: int, consumptions: int) -> list[Call]:
    accounts = [master, *subs]
    calls: list[Call] = [
        (
            ORDER,
            {
                "i": {
                    "uid": accounts[n % len(accounts)],
                    "billingMethod": "SUBSCRIPTION",
                    "amount": "1.00",
                    "idempotencyKey": f"ord-{n}",
                }
            },
        )
        for n in range(orders)
    ]
    calls += [
        (RECORD, {"i": {"uid": accounts[n % len(accounts)], "amount": "1.00", "idempotencyKey": f"oc-{n}"}})
        for n in range(consumptions)
    ]
    return _interleave(calls, orders)


def freeze_vs_subs(master: str, subs: Sequence[str], rounds: int) -> list[Call]:
    """Freeze/unfreeze of the master while its sub-accounts change and order."""
    calls: list[Call] = []
    for i in range(rounds):
        sub = subs[i % len(subs)]
        calls += [
            (UNFREEZE if i % 2 else FREEZE, {"i": {"uids": [master], "confirm": True}}),
            (PURCHASE, {"i": {"uid": sub, "status": "BANNED" if (i // len(subs)) % 2 == 0 else "NORMAL"}}),
            (INFO, {"i": {"uid": sub, "nickname": f"sub-{i}"}}),
            (ORDER, {"i": {"uid": sub, "billingMethod": "PAYG", "amount": "0.00", "idempotencyKey": f"fo-{i}"}}),
            (FREEZE if i % 2 else UNFREEZE, {"i": {"uids": [sub], "confirm": True}}),
        ]
    return calls


def repeats(uid: str, count: int, key: str = "once") -> list[Call]:
    return [(RECORD, {"i": {"uid": uid, "amount": "1.00", "idempotencyKey": key}}) for _ in range(count)]


def _interleave(calls: list[Call], first: int) -> list[Call]:
    """The first `first` calls spread evenly among the rest, so both kinds are in flight together."""
    head, tail = calls[:first], calls[first:]
    out: list[Call] = []
    step = max(1, len(tail) // max(1, len(head)))
    for n, call in enumerate(tail):
        if n % step == 0 and head:
            out.append(head.pop(0))
        out.append(call)
    return out + head


# ---------------------------------------------------------------- checks


async def setup_family(base_url: str, token: str, master: str, subs: Sequence[str], quota: str) -> None:
    """Link `master` with `quota` and its sub-accounts (one after the other)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        for uid, extra in [(master, {"quotaAmount": quota}), *((s, {"masterUid": master}) for s in subs)]:
            response = await http.post(
                "/graphql",
                headers={"Authorization": f"Bearer {token}"},
                json={"query": LINK, "variables": {"input": {"uid": uid, **extra}}},
            )
            body = response.json()
            assert "errors" not in body and body["data"]["linkAccount"]["userErrors"] == [], body


async def pool_of(db: Database, uid: str) -> QuotaPool:
    async with db.read() as session:
        pool = await session.scalar(
            select(QuotaPool).join(Account, Account.pool_id == QuotaPool.id).where(Account.uid == uid)
        )
        assert pool is not None
        return pool


async def check_books(db: Database, uid: str) -> QuotaPool:
    """The pool's consumed amounts equal its ledger, and its adjustment records form one chain."""
    pool = await pool_of(db, uid)
    async with db.read() as session:
        ledger = dict(
            (
                await session.execute(
                    select(LedgerEntry.kind, func.sum(LedgerEntry.amount_cents))
                    .where(LedgerEntry.pool_id == pool.id)
                    .group_by(LedgerEntry.kind)
                )
            ).all()
        )
        records = list(
            await session.scalars(
                select(QuotaAdjustment).where(QuotaAdjustment.pool_id == pool.id).order_by(QuotaAdjustment.id)
            )
        )
    spent = int(ledger.get("CONSUMPTION", 0) or 0) + int(ledger.get("SUBSCRIPTION_ORDER", 0) or 0)
    deducted = int(ledger.get("DEDUCTION", 0) or 0) - int(ledger.get("REPAYMENT", 0) or 0)
    assert pool.deducted_cents == deducted
    assert pool.undeducted_cents == spent - int(ledger.get("DEDUCTION", 0) or 0)
    for previous, record in itertools.pairwise(records):
        assert record.before_cents == previous.after_cents, (previous.id, record.id)
        assert record.value_cents == record.after_cents - record.before_cents
    if records:
        assert records[-1].after_cents == pool.amount_cents
    return pool


async def check_audit_chain(db: Database) -> int:
    """Per account and chained field, every audit entry's `before` is the previous entry's `after`."""
    async with db.read() as session:
        entries = list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
        accounts = {a.id: a for a in await session.scalars(select(Account))}
    state: dict[tuple[int, str], Any] = {}
    checked = 0
    for entry in entries:
        before, after = entry.before or {}, entry.after or {}
        for name in CHAINED:
            if name in before and name in after:
                key = (entry.account_id, name)
                if key in state:
                    assert before[name] == state[key], (entry.id, entry.action, name, before[name], state[key])
                    checked += 1
                state[key] = after[name]
    # The last entry of each field is where the row is now.
    for (account_id, name), value in state.items():
        account = accounts[account_id]
        if name == "nickname":
            assert account.nickname == value
        elif name == "paygFreezeStatus":
            assert account.payg_freeze.value == value
        elif name == "purchaseControl":
            assert account.purchase_control.value == value
    return checked


async def deadlocks(db: Database) -> int | None:
    """PostgreSQL's count of deadlocks it detected in this database (None on SQLite)."""
    if not db.is_postgres:
        return None
    async with db.read() as session:
        await session.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(
            await session.scalar(text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")) or 0
        )


async def deadlocks_since(db: Database, before: int | None) -> int:
    """Deadlocks detected since `before` was read.

    Backends report their counters when they exit or idle; the burst's
    connections are closed by then (the served app disposed its pool), and a
    few polls let the last exits land. Only ever undercounts while waiting.
    """
    if before is None:
        return 0
    after = before
    for _ in range(20):
        after = await deadlocks(db) or 0
        if after != before:
            break
        await asyncio.sleep(0.05)
    return after - before


async def count_instances(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count(Instance.id))) or 0)

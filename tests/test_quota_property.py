"""Property: any sequence of quota changes on a real SQLite database equals a plain Decimal model."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from uidhub.db import Database
from uidhub.models import Partner, QuotaPool
from uidhub.models.enums import AccountType, OperationMethod, PartnerKind, Role
from uidhub.models.money import parse_money
from uidhub.resolvers import accounts, quota
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.errors import UserErrors

CENT = Decimal("0.01")
# Small whole amounts make the edges (deduct exactly what is undeducted, repay all) frequent;
# arbitrary cents cover the rest.
amounts = st.one_of(
    st.integers(min_value=-1, max_value=6).map(lambda n: Decimal(n).quantize(CENT)),
    st.decimals(min_value=Decimal("-5"), max_value=Decimal("5000"), places=2),
)
operation = st.one_of(
    st.tuples(st.just("set"), st.one_of(amounts, st.just(Decimal("999999999999.99")))),
    st.tuples(st.sampled_from(["record", "deduct", "repay"]), amounts),
    st.tuples(st.just("repeat"), st.integers(min_value=0, max_value=1000)),
    # Deduct or repay everything there is, one cent less, or one cent more: the edges of the rules.
    st.tuples(st.sampled_from(["deduct-all", "repay-all"]), st.integers(min_value=-1, max_value=1)),
)


@dataclass
class Model:
    """The pool as plain Decimals, with the rules of RULES.md ("Quota")."""

    amount: Decimal = Decimal("0.00")
    deducted: Decimal = Decimal("0.00")
    undeducted: Decimal = Decimal("0.00")
    results: dict[str, tuple[str, Decimal, tuple[Decimal, Decimal, Decimal]]] = field(default_factory=dict)

    def state(self) -> tuple[Decimal, Decimal, Decimal]:
        return (self.amount, self.deducted, self.undeducted)

    def apply(self, op: str, value: Decimal) -> bool:
        """Apply `op`; False when the rules refuse it (and nothing changes)."""
        if op == "set":
            if value < 0:
                return False
            self.amount = value
        elif value <= 0:
            return False
        elif op == "record":
            self.undeducted += value
        elif op == "deduct":
            if value > self.undeducted:
                return False
            self.undeducted -= value
            self.deducted += value
        elif op == "repay":
            if value > self.deducted:
                return False
            self.deducted -= value
        return True


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT)


async def _run(url: str, ops: list[tuple[str, object]]) -> None:
    db = Database(url)
    try:
        async with db.write() as session:
            partner = Partner(uid="P", name="P", kind=PartnerKind.DISTRIBUTOR, alert_emails=["a@example.com"])
            session.add(partner)
            await session.flush()
            actor = Actor(
                partner_id=partner.id,
                partner_uid="P",
                partner_kind=PartnerKind.DISTRIBUTOR,
                role=Role.ADMIN,
                method=OperationMethod.PLATFORM,
                operator_uid="P",
                operator_name="P",
                is_ram=False,
            )
            await accounts.link_account(
                session,
                actor,
                uid="U1",
                account_type=AccountType.END_USER,
                nickname=None,
                email=None,
                master_uid=None,
                quota_amount_cents=None,
            )
        model = Model()
        keys: list[str] = []
        for step, (op, raw) in enumerate(ops):
            if op == "repeat":
                if not keys:
                    continue
                key = keys[int(raw) % len(keys)]  # type: ignore[call-overload]
                first_op, value, first_state = model.results[key]
                expected_ok, expected_state = True, first_state
            else:
                key = f"k{step}"
                first_op, value = op, raw  # type: ignore[assignment]
                if op.endswith("-all"):
                    first_op = op.removesuffix("-all")
                    base = model.undeducted if first_op == "deduct" else model.deducted
                    value = base + CENT * int(raw)  # type: ignore[call-overload]
                expected_ok = model.apply(first_op, value)
                expected_state = model.state()
            value_cents = parse_money(format(value, "f"))
            try:
                async with db.write() as session:
                    if first_op == "set":
                        result = await quota.set_quota_amount(session, actor, "U1", value_cents, key)
                    else:
                        result = await quota.change_balance(
                            session, actor, quota.BalanceOp[first_op.upper()], "U1", value_cents, key
                        )
                ok = True
            except UserErrors:
                ok = False
            assert ok is expected_ok, (op, value, model)
            if ok:
                got = tuple(
                    cents(Decimal(c) / 100)
                    for c in (result.pool.amount_cents, result.pool.deducted_cents, result.pool.undeducted_cents)
                )
                assert got == expected_state
                if op != "repeat":
                    keys.append(key)
                    model.results[key] = (first_op, value, expected_state)
            async with db.read() as session:
                pool = await session.scalar(select(QuotaPool))
                assert pool is not None
                stored = tuple(
                    cents(Decimal(c) / 100) for c in (pool.amount_cents, pool.deducted_cents, pool.undeducted_cents)
                )
                assert stored == model.state()
                assert pool.deducted_cents >= 0 and pool.undeducted_cents >= 0
                assert pool.available_cents == pool.amount_cents - pool.deducted_cents - pool.undeducted_cents
    finally:
        await db.dispose()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=25))
def test_any_sequence_equals_the_decimal_model(
    ops: list[tuple[str, object]], sqlite_template: Path, tmp_path: Path
) -> None:
    target = tmp_path / f"{uuid.uuid4().hex}.db"
    shutil.copy(sqlite_template, target)
    try:
        asyncio.run(_run(f"sqlite+aiosqlite:///{target}", ops))
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)

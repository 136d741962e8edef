"""Orders: `purchaseCheck` (decides, writes nothing) and `placeOrder` (decides the same way and acts).

`placeOrder` locks the ordering account and its master (one SELECT … FOR
NO KEY UPDATE in id order: the lock order of `resolvers.locks`) and then the
pool, before deciding: a freeze of the master, a ban, or a consumption that
shuts the pool down either commits before the order and is seen by it, or
waits for the order to commit. A SUBSCRIPTION order charges its amount to the
pool's consumed-undeducted in the same transaction and then runs
`after_pool_change` (credit control, alerts).

Choices where RULES.md is silent (also in the README):

- The blocking account is that of the first denial reason, in the order
  ACCOUNT_NOT_ACTIVE (the account itself), PURCHASE_BANNED / PAYG_FROZEN (the
  account when its own setting blocks, otherwise its master), CREDIT_SHUTDOWN
  and INSUFFICIENT_QUOTA (the pool's owner: the master for a sub-account).
- A denied `placeOrder` writes no audit entry and creates nothing; its
  decision is stored under the idempotency key like an allowed one, so a
  repeat returns the same decision.
- Amounts are ≥ 0 (negative is INVALID_INPUT for placeOrder, a GraphQL
  BAD_USER_INPUT error for purchaseCheck); a description is at most 500
  characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import GraphQLError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Account, Instance, LedgerEntry, QuotaPool
from models import rules as R
from models.base import utcnow
from models.enums import (
    AuditAction,
    BillingMethod,
    LedgerKind,
    PaygFreezeStatus,
    PurchaseControl,
    PurchaseDenialReason,
)
from models.money import MAX_CENTS, format_money
from resolvers import accounts as account_ops
from resolvers import audit, idempotency
from resolvers.actor import Actor, Permission
from resolvers.errors import invalid
from resolvers.locks import lock_accounts, lock_pool
from resolvers.pagination import InvalidArgument
from resolvers.pools import after_pool_change
from resolvers.quota import BalanceOp, balance_update

DESCRIPTION_MAX_CHARS = 500


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reasons: list[PurchaseDenialReason]
    blocking_account_id: int | None
    available_cents: int

    def to_json(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reasons": [r.value for r in self.reasons],
            "blockingAccountId": self.blocking_account_id,
            "available": self.available_cents,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        return cls(
            allowed=bool(data["allowed"]),
            reasons=[PurchaseDenialReason(r) for r in data["reasons"]],
            blocking_account_id=data.get("blockingAccountId"),
            available_cents=int(data["available"]),
        )


def blocking_account(reasons: list[PurchaseDenialReason], account: Account, master: Account | None) -> int | None:
    """The account whose own setting (or status, or pool) blocks: see the module docstring."""
    if not reasons:
        return None
    first = reasons[0]
    owner_id = account.master_id or account.id
    if first is PurchaseDenialReason.ACCOUNT_NOT_ACTIVE:
        return account.id
    if first is PurchaseDenialReason.PURCHASE_BANNED:
        own = account.purchase_control is PurchaseControl.BANNED
        return account.id if own or master is None else master.id
    if first is PurchaseDenialReason.PAYG_FROZEN:
        own = account.payg_freeze is PaygFreezeStatus.FROZEN
        return account.id if own or master is None else master.id
    return owner_id


def decide(
    account: Account, master: Account | None, pool: QuotaPool, billing_method: BillingMethod, amount_cents: int
) -> Decision:
    """The purchase decision of RULES.md ("Orders") for rows already loaded."""
    view = R.PolicyView.of(account, master, pool)
    reasons = R.purchase_denials(
        status=account.status,
        purchase_control=view.purchase,
        freeze=view.freeze,
        credit=view.credit,
        billing_method=billing_method,
        amount_cents=amount_cents,
        available_cents=pool.available_cents,
    )
    return Decision(
        allowed=not reasons,
        reasons=reasons,
        blocking_account_id=blocking_account(reasons, account, master),
        available_cents=pool.available_cents,
    )


async def purchase_check(
    session: AsyncSession, actor: Actor, uid: str, billing_method: BillingMethod, amount_cents: int
) -> Decision:
    """Would this order be allowed? Reads only: no lock, no write."""
    actor.require(Permission.PURCHASE_CHECK)
    if amount_cents < 0:
        raise InvalidArgument("`amount` must not be negative.")
    account = await account_ops.find(session, actor, uid)
    if account is None:
        raise GraphQLError(f"No account with UID {uid!r}.", extensions={"code": "NOT_FOUND"})
    master = await session.get(Account, account.master_id) if account.master_id is not None else None
    pool = await session.get(QuotaPool, account.pool_id)
    assert pool is not None
    return decide(account, master, pool, billing_method, amount_cents)


@dataclass(frozen=True)
class OrderOutcome:
    decision: Decision
    instance: Instance | None
    #: The instance's account and its policy inputs, for the payload.
    account: Account


async def place_order(
    session: AsyncSession,
    actor: Actor,
    *,
    uid: str,
    billing_method: BillingMethod,
    amount_cents: int,
    description: str | None,
    idempotency_key: str,
) -> OrderOutcome:
    actor.require(Permission.ORDER)
    if amount_cents < 0:
        raise invalid("amount must not be negative.", "input", "amount")
    if amount_cents >= MAX_CENTS:
        raise invalid("amount must be below 10^12.", "input", "amount")
    if description is not None:
        problem = R.text_problem(description, max_chars=DESCRIPTION_MAX_CHARS)
        if problem:
            raise invalid(f"description {problem}.", "input", "description")
    request = {
        "uid": uid,
        "billingMethod": billing_method.value,
        "amount": amount_cents,
        "description": description,
    }
    claim = await idempotency.claim(session, actor, idempotency_key, "placeOrder", request, "input", "idempotencyKey")
    found = await account_ops.get(session, actor, uid, "input", "uid")
    if claim.replay is not None:
        replay = claim.replay
        instance = await session.get(Instance, replay["instanceId"]) if replay.get("instanceId") else None
        return OrderOutcome(Decision.from_json(replay["decision"]), instance, found)

    locked = await lock_accounts(session, [found.id] + ([found.master_id] if found.master_id else []))
    account = locked[found.id]
    master = locked.get(account.master_id) if account.master_id is not None else None
    pool = await lock_pool(session, account.pool_id)
    decision = decide(account, master, pool, billing_method, amount_cents)
    instance: Instance | None = None
    if decision.allowed:
        instance = Instance(
            account_id=account.id,
            billing_method=billing_method,
            amount_cents=amount_cents,
            description=description,
            created_at=utcnow(),
        )
        session.add(instance)
        if billing_method is BillingMethod.SUBSCRIPTION and amount_cents > 0:
            # The same atomic UPDATE … RETURNING as recordConsumption; it refreshes `pool`.
            await session.scalar(balance_update(BalanceOp.RECORD, pool.id, amount_cents))
            session.add(
                LedgerEntry(
                    pool_id=pool.id,
                    account_id=account.id,
                    kind=LedgerKind.SUBSCRIPTION_ORDER,
                    amount_cents=amount_cents,
                    method=actor.method,
                    operator_uid=actor.operator_uid,
                    idempotency_key=idempotency_key,
                )
            )
        await session.flush()
        audit.record(
            session,
            actor,
            account,
            AuditAction.ORDER_PLACED,
            after={
                "instanceId": instance.id,
                "billingMethod": billing_method.value,
                "amount": format_money(amount_cents),
                "description": description,
                "availableAfter": format_money(pool.available_cents),
            },
        )
        if billing_method is BillingMethod.SUBSCRIPTION and amount_cents > 0:
            await after_pool_change(session, pool, actor)
    await idempotency.complete(
        session, claim, {"decision": decision.to_json(), "instanceId": instance.id if instance else None}
    )
    return OrderOutcome(decision, instance, account)


async def policy_of(session: AsyncSession, account: Account) -> R.PolicyView:
    """The policy `account` is under, from rows this session holds (or loads)."""
    master = await session.get(Account, account.master_id) if account.master_id is not None else None
    pool = await session.get(QuotaPool, account.pool_id)
    assert pool is not None
    return R.PolicyView.of(account, master, pool)


async def load_instance(session: AsyncSession, actor: Actor, pk: int) -> tuple[Instance, Account] | None:
    """An instance and its account, when the actor may see the account."""
    row = (
        await session.execute(
            select(Instance, Account).join(Account, Account.id == Instance.account_id).where(Instance.id == pk)
        )
    ).first()
    if row is None or not account_ops.visible(actor, row[1]):
        return None
    return row[0], row[1]

"""Shutdown policy state, instances and purchase decisions (read side)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account
from uidhub.models import Instance as InstanceRow
from uidhub.models.enums import (
    BillingMethod,
    CreditControlStatus,
    InstanceStatus,
    PaygFreezeStatus,
    PurchaseControl,
    PurchaseDenialReason,
    ShutdownPolicy,
    StopReason,
)
from uidhub.models.rows import AccountLike
from uidhub.models.rules import PolicyView, instance_status
from uidhub.resolvers import orders as order_ops
from uidhub.resolvers import policy as policy_ops
from uidhub.resolvers.actor import Actor
from uidhub.schema.common import INPUT_ARG, Node, UserError, mutate, to_global_id, user_errors
from uidhub.schema.context import Info
from uidhub.schema.registry import register_node
from uidhub.schema.scalars import Money

if TYPE_CHECKING:
    from uidhub.schema.accounts import EndUser, EndUserPayload

LazyEndUser = strawberry.lazy("uidhub.schema.accounts")


async def load_policy_view(info: Info, account: AccountLike) -> PolicyView:
    loaders = info.context.loaders
    master = await loaders.account_row.load(account.master_id) if account.master_id else None
    pool = await loaders.pool.load(account.pool_id)
    return PolicyView.of(account, master, pool)


@strawberry.type(description="The shutdown policy an account is under: own settings and what is in force.")
class ShutdownPolicyState:
    payg_freeze_status: PaygFreezeStatus = strawberry.field(description="This account's own setting.")
    effective_payg_freeze_status: PaygFreezeStatus = strawberry.field(
        description="FROZEN when this account or its master is frozen."
    )
    purchase_control: PurchaseControl = strawberry.field(description="This account's own setting.")
    effective_purchase_control: PurchaseControl = strawberry.field(
        description="BANNED when this account or its master is banned."
    )
    shutdown_policy: ShutdownPolicy = strawberry.field(
        description="The policy in force; a sub-account's is always its master's."
    )
    shutdown_delay_credit: Money = strawberry.field(
        description="How far below zero DELAY_STOP lets available fall before PAYG stops."
    )
    credit_control_status: CreditControlStatus = strawberry.field(
        description="The PAYG shutdown status credit control derived for the pool."
    )

    @classmethod
    def of(cls, view: PolicyView) -> ShutdownPolicyState:
        return cls(
            payg_freeze_status=view.own_freeze,
            effective_payg_freeze_status=view.freeze,
            purchase_control=view.own_purchase,
            effective_purchase_control=view.purchase,
            shutdown_policy=view.policy,
            shutdown_delay_credit=Money(view.delay_credit_cents),
            credit_control_status=view.credit,
        )


@strawberry.type(description="A cloud resource bought by an order.")
class Instance(Node):
    billing_method: BillingMethod = strawberry.field(description="PAYG or SUBSCRIPTION.")
    status: InstanceStatus = strawberry.field(
        description="A PAYG instance is STOPPED while its account is effectively frozen or shut down; "
        "a subscription instance keeps running."
    )
    stop_reasons: list[StopReason] = strawberry.field(description="Why it is stopped; empty while running.")
    description: str | None = strawberry.field(description="Free text given with the order.")
    created_at: datetime = strawberry.field(description="When the order created it.")
    _row: strawberry.Private[InstanceRow]

    @strawberry.field(description="The account that owns the instance.")
    async def account(self, info: Info) -> Annotated[EndUser, strawberry.lazy("uidhub.schema.accounts")]:
        # lazy: uidhub.schema.accounts imports this module (EndUser shows its policy)
        from uidhub.schema.accounts import required_end_user

        return await required_end_user(info, self._row.account_id)

    @classmethod
    def of(cls, row: InstanceRow, view: PolicyView) -> Instance:
        reasons = view.stop_reasons(row.billing_method)
        return cls(
            id=to_global_id("Instance", row.id),
            billing_method=row.billing_method,
            status=instance_status(reasons),
            stop_reasons=reasons,
            description=row.description,
            created_at=row.created_at,
            _row=row,
        )


@strawberry.type(description="Whether an order would be (or was) allowed, and why not.")
class PurchaseDecision:
    allowed: bool = strawberry.field(description="True when no reason denies the order.")
    reasons: list[PurchaseDenialReason] = strawberry.field(
        description="Empty when allowed; every reason that applies otherwise."
    )
    available_quota: Money = strawberry.field(description="Available quota of the pool the order would spend from.")
    _blocking_account_id: strawberry.Private[int | None]

    @strawberry.field(description="The account whose own setting blocks (the master for a cascade).")
    async def blocking_account(self, info: Info) -> Annotated[EndUser, LazyEndUser] | None:
        # lazy: uidhub.schema.accounts imports this module (EndUser shows its policy)
        from uidhub.schema.accounts import scoped_end_user

        return await scoped_end_user(info, self._blocking_account_id)

    @classmethod
    def of(cls, decision: order_ops.Decision) -> PurchaseDecision:
        return cls(
            allowed=decision.allowed,
            reasons=list(decision.reasons),
            available_quota=Money(decision.available_cents),
            _blocking_account_id=decision.blocking_account_id,
        )


async def resolve_instance_node(info: Info, pk: int) -> Instance | None:
    """node(id:) for an Instance: null unless its account is visible to the viewer."""
    session = await info.context.session()
    found = await order_ops.load_instance(session, info.context.require_actor(), pk)
    if found is None:
        return None
    row, account = found
    return Instance.of(row, await load_policy_view(info, account))


register_node("Instance", resolve_instance_node)


# ---------------------------------------------------------------- payloads and inputs


@strawberry.type(description="What a freeze or unfreeze did (or would do) to one of the UIDs asked for.")
class PolicyChangeResult:
    uid: str = strawberry.field(description="The UID as given.")
    end_user: Annotated[EndUser, LazyEndUser] | None = strawberry.field(
        description="The account (after the change when applied); null when not found."
    )
    user_errors: list[UserError] = strawberry.field(
        description="Why this UID was not changed (NOT_FOUND, ACCOUNT_NOT_ACTIVE); empty otherwise."
    )


@strawberry.type(description="Result of freezePayg / unfreezePayg over several UIDs.")
class PolicyChangePayload:
    applied: bool = strawberry.field(description="False for a preview (confirm: false): nothing was changed.")
    results: list[PolicyChangeResult] = strawberry.field(description="One result per distinct UID, in input order.")
    affected_accounts: list[Annotated[EndUser, LazyEndUser]] = strawberry.field(
        description="Every account whose effective freeze status changes, sub-accounts included."
    )
    affected_payg_instances: int = strawberry.field(
        description="PAYG instances that stop (freeze) or may start again (unfreeze)."
    )
    user_errors: list[UserError] = strawberry.field(
        description="Why nothing at all was done (bad input); per-UID problems are in `results`."
    )


def _policy_change_errors(errors: list[UserError]) -> PolicyChangePayload:
    return PolicyChangePayload(
        applied=False, results=[], affected_accounts=[], affected_payg_instances=0, user_errors=errors
    )


@strawberry.type(description="Result of placeOrder.")
class PlaceOrderPayload:
    decision: PurchaseDecision | None = strawberry.field(
        description="Whether the order was allowed and why not; null on input errors."
    )
    instance: Instance | None = strawberry.field(description="Created only when the decision allows it.")
    user_errors: list[UserError] = strawberry.field(description="Why nothing was done; empty otherwise.")


def _order_errors(errors: list[UserError]) -> PlaceOrderPayload:
    return PlaceOrderPayload(decision=None, instance=None, user_errors=errors)


@strawberry.input(description="Freeze or unfreeze PAYG on several accounts (the list page's bulk action).")
class FreezeInput:
    uids: list[str] = strawberry.field(description="The accounts, at most 100.")
    confirm: bool = strawberry.field(
        default=False, description="False (the default) previews the effect and changes nothing."
    )
    reason: str | None = strawberry.field(default=None, description="Why: kept on the audit entries.")


@strawberry.input(description="Ban or allow new orders on an account (its sub-accounts follow).")
class SetPurchaseControlInput:
    uid: str = strawberry.field(description="The account.")
    status: PurchaseControl = strawberry.field(description="The account's own new setting.")
    reason: str | None = strawberry.field(default=None, description="Why: kept on the audit entry.")


@strawberry.input(description="Set the shutdown policy of a master or standalone account.")
class SetShutdownPolicyInput:
    uid: str = strawberry.field(description="A master or standalone account (a sub-account is POLICY_INHERITED).")
    policy: ShutdownPolicy = strawberry.field(description="The new policy.")
    shutdown_delay_credit: Money | None = strawberry.field(
        default=None,
        description="Only for DELAY_STOP; defaults to 0. A non-zero credit with another policy is INVALID_INPUT.",
    )


@strawberry.input(description="Place an order for a new instance.")
class PlaceOrderInput:
    uid: str = strawberry.field(description="The ordering account.")
    billing_method: BillingMethod = strawberry.field(description="PAYG or SUBSCRIPTION.")
    amount: Money = strawberry.field(
        description="For SUBSCRIPTION, charged to the quota pool as consumed-undeducted; for PAYG an estimate "
        "(>= 0) that is not charged."
    )
    description: str | None = strawberry.field(default=None, description="Free text, at most 500 characters.")
    idempotency_key: str = strawberry.field(
        description="Repeating a key with the same input returns the first result and changes nothing; "
        "with a different input it is IDEMPOTENCY_CONFLICT."
    )


# ---------------------------------------------------------------- root fields


@strawberry.type
class PolicyQueries:
    @strawberry.field(description="Would this order be allowed? Decides like placeOrder and writes nothing.")
    async def purchase_check(
        self,
        info: Info,
        uid: Annotated[str, strawberry.argument(description="The ordering account.")],
        billing_method: Annotated[BillingMethod, strawberry.argument(description="PAYG or SUBSCRIPTION.")],
        amount: Annotated[Money, strawberry.argument(description="The order's amount (>= 0).")],
    ) -> PurchaseDecision:
        session = await info.context.session()
        decision = await order_ops.purchase_check(
            session, info.context.require_actor(), uid, billing_method, int(amount)
        )
        return PurchaseDecision.of(decision)


async def _freeze(info: Info, input: FreezeInput, target: PaygFreezeStatus) -> PolicyChangePayload:
    # lazy: uidhub.schema.accounts imports this module (EndUser shows its policy)
    from uidhub.schema.accounts import EndUser

    async def op(session: AsyncSession, actor: Actor) -> PolicyChangePayload:
        outcome = await policy_ops.change_freeze(
            session, actor, input.uids, target=target, confirm=input.confirm, reason=input.reason
        )
        return PolicyChangePayload(
            applied=outcome.applied,
            results=[
                PolicyChangeResult(
                    uid=r.uid,
                    end_user=EndUser.of(r.account) if r.account is not None else None,
                    user_errors=user_errors(r.errors),
                )
                for r in outcome.results
            ],
            affected_accounts=[EndUser.of(a) for a in outcome.affected],
            affected_payg_instances=outcome.affected_payg_instances,
            user_errors=[],
        )

    return await mutate(info, op, _policy_change_errors)


@strawberry.type
class PolicyMutations:
    @strawberry.mutation(
        description="Freeze PAYG on several accounts: their PAYG instances (and their sub-accounts') stop. "
        "confirm: false previews."
    )
    async def freeze_payg(self, info: Info, input: Annotated[FreezeInput, INPUT_ARG]) -> PolicyChangePayload:
        return await _freeze(info, input, PaygFreezeStatus.FROZEN)

    @strawberry.mutation(
        description="Unfreeze PAYG on several accounts; a sub-account frozen in its own right stays frozen. "
        "confirm: false previews."
    )
    async def unfreeze_payg(self, info: Info, input: Annotated[FreezeInput, INPUT_ARG]) -> PolicyChangePayload:
        return await _freeze(info, input, PaygFreezeStatus.NORMAL)

    @strawberry.mutation(description="Ban or allow new orders on an account; its sub-accounts follow a master's ban.")
    async def set_purchase_control(
        self, info: Info, input: Annotated[SetPurchaseControlInput, INPUT_ARG]
    ) -> Annotated[EndUserPayload, LazyEndUser]:
        # lazy: uidhub.schema.accounts imports this module (EndUser shows its policy)
        from uidhub.schema.accounts import EndUser, EndUserPayload, end_user_errors

        async def op(session: AsyncSession, actor: Actor) -> EndUserPayload:
            row = await policy_ops.set_purchase_control(session, actor, input.uid, input.status, input.reason)
            return EndUserPayload(end_user=EndUser.of(row), user_errors=[])

        return await mutate(info, op, end_user_errors)

    @strawberry.mutation(
        description="Set the shutdown policy (and DELAY_STOP's delay credit) of a master or standalone account."
    )
    async def set_shutdown_policy(
        self, info: Info, input: Annotated[SetShutdownPolicyInput, INPUT_ARG]
    ) -> Annotated[EndUserPayload, LazyEndUser]:
        # lazy: uidhub.schema.accounts imports this module (EndUser shows its policy)
        from uidhub.schema.accounts import EndUser, EndUserPayload, end_user_errors

        credit = int(input.shutdown_delay_credit) if input.shutdown_delay_credit is not None else None

        async def op(session: AsyncSession, actor: Actor) -> EndUserPayload:
            row = await policy_ops.set_shutdown_policy(session, actor, input.uid, input.policy, credit)
            return EndUserPayload(end_user=EndUser.of(row), user_errors=[])

        return await mutate(info, op, end_user_errors)

    @strawberry.mutation(
        description="Place an order: decided like purchaseCheck; when allowed the instance is created and a "
        "SUBSCRIPTION amount is charged to the pool. Idempotent by key."
    )
    async def place_order(self, info: Info, input: Annotated[PlaceOrderInput, INPUT_ARG]) -> PlaceOrderPayload:
        async def op(session: AsyncSession, actor: Actor) -> PlaceOrderPayload:
            outcome = await order_ops.place_order(
                session,
                actor,
                uid=input.uid,
                billing_method=input.billing_method,
                amount_cents=int(input.amount),
                description=input.description,
                idempotency_key=input.idempotency_key,
            )
            instance = None
            if outcome.instance is not None:
                owner = await session.get(Account, outcome.instance.account_id)
                assert owner is not None
                instance = Instance.of(outcome.instance, await order_ops.policy_of(session, owner))
            return PlaceOrderPayload(decision=PurchaseDecision.of(outcome.decision), instance=instance, user_errors=[])

        return await mutate(info, op, _order_errors)

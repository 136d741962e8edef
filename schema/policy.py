"""Shutdown policy state, instances and purchase decisions (read side)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from models import Account, QuotaPool
from models import Instance as InstanceRow
from models.enums import (
    BillingMethod,
    CreditControlStatus,
    InstanceStatus,
    PaygFreezeStatus,
    PurchaseControl,
    PurchaseDenialReason,
    ShutdownPolicy,
    StopReason,
)
from models.rules import PolicyView, instance_status
from schema.common import Node, to_global_id
from schema.context import Info
from schema.scalars import Money

if TYPE_CHECKING:
    from schema.accounts import EndUser


def policy_view(account: Account, master: Account | None, pool: QuotaPool) -> PolicyView:
    return PolicyView(
        own_freeze=account.payg_freeze,
        own_purchase=account.purchase_control,
        master_freeze=master.payg_freeze if master else None,
        master_purchase=master.purchase_control if master else None,
        policy=pool.shutdown_policy,
        delay_credit_cents=pool.delay_credit_cents,
        credit=pool.credit_control_status,
    )


async def load_policy_view(info: Info, account: Account) -> PolicyView:
    loaders = info.context.loaders
    master = await loaders.account.load(account.master_id) if account.master_id else None
    pool = await loaders.pool.load(account.pool_id)
    return policy_view(account, master, pool)


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
    async def account(self, info: Info) -> Annotated[EndUser, strawberry.lazy("schema.accounts")]:
        from schema.accounts import EndUser

        row = await info.context.loaders.account.load(self._row.account_id)
        return EndUser.of(row)

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
    async def blocking_account(self, info: Info) -> Annotated[EndUser, strawberry.lazy("schema.accounts")] | None:
        from schema.accounts import EndUser

        if self._blocking_account_id is None:
            return None
        row = await info.context.loaders.account.load(self._blocking_account_id)
        return EndUser.of(row) if row else None


class PolicyQueries:
    """Root query fields of the policy domain."""


class PolicyMutations:
    """Root mutation fields of the policy domain."""

"""Quota pool and its adjustment records."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account, rules
from uidhub.models import QuotaAdjustment as AdjustmentRow
from uidhub.models import QuotaThreshold as ThresholdRow
from uidhub.models import forecast as forecasts
from uidhub.models.enums import (
    AlertSeverity,
    OperationMethod,
    QuotaOperationType,
    ThresholdAction,
    ThresholdKind,
)
from uidhub.models.rows import PoolLike
from uidhub.resolvers import quota as quota_ops
from uidhub.resolvers import thresholds as threshold_ops
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.pagination import InvalidArgument, Page, check_first, decode_id_cursor, page_of_rows
from uidhub.resolvers.pool_amounts import PoolResult
from uidhub.resolvers.tempcredit import MAX_ACTIVE_PER_POOL as MAX_ACTIVE_CREDITS
from uidhub.schema.common import INPUT_ARG, Node, PageInfo, UserError, from_global_id, mutate, to_global_id
from uidhub.schema.context import Info
from uidhub.schema.partners import Operator
from uidhub.schema.registry import register_node
from uidhub.schema.scalars import Money

if TYPE_CHECKING:
    from uidhub.schema.accounts import EndUser
    from uidhub.schema.tempcredit import TemporaryCredit


@strawberry.type(description="One change of a pool's quota amount.")
class QuotaAdjustment(Node):
    operation_type: QuotaOperationType = strawberry.field(description="QUOTA_CREATE for the first amount.")
    operation_time: datetime = strawberry.field(description="When the amount changed.")
    before: Money = strawberry.field(description="The amount before.")
    value: Money = strawberry.field(
        description="The change, after - before: positive for an increase, negative for a decrease."
    )
    after: Money = strawberry.field(description="The amount after.")
    method: OperationMethod = strawberry.field(description="PLATFORM or API.")
    operator: Operator | None = strawberry.field(description="Who changed it.")
    reason: str | None = strawberry.field(
        default=None,
        description="Why, when the change has one: a temporary credit's grant or revert says so here with the "
        "operator's reason; null for other changes.",
    )

    @classmethod
    def of(cls, row: AdjustmentRow) -> QuotaAdjustment:
        return cls(
            id=to_global_id("QuotaAdjustment", row.id),
            operation_type=row.operation_type,
            operation_time=row.occurred_at,
            before=Money(row.before_cents),
            value=Money(row.value_cents),
            after=Money(row.after_cents),
            method=row.method,
            operator=Operator.from_columns(row.operator_uid, row.operator_name, row.operator_is_ram, row.operator_role),
            reason=row.reason,
        )


@strawberry.type(description="An edge of a QuotaAdjustmentConnection.")
class QuotaAdjustmentEdge:
    cursor: str = strawberry.field(description="Pass as `after` to continue after this record.")
    node: QuotaAdjustment = strawberry.field(description="The record.")


@strawberry.type(description="Quota records, newest first.")
class QuotaAdjustmentConnection:
    edges: list[QuotaAdjustmentEdge] = strawberry.field(description="This page's records.")
    page_info: PageInfo = strawberry.field(description="Paging state.")
    _page: strawberry.Private[Page[AdjustmentRow]]

    @strawberry.field(description="Records matching the arguments, over all pages.")
    async def total_count(self) -> int:
        return await self._page.count()

    @classmethod
    def of(cls, page: Page[AdjustmentRow]) -> QuotaAdjustmentConnection:
        return cls(
            edges=[
                QuotaAdjustmentEdge(cursor=c, node=QuotaAdjustment.of(r))
                for r, c in zip(page.items, page.cursors, strict=True)
            ],
            page_info=PageInfo.of(page),
            _page=page,
        )


@strawberry.type(
    description="When the pool runs out at its recent pace: spend (consumption and subscription orders) over "
    "the last `basisDays` days, spread evenly, extrapolated from the current available amount."
)
class QuotaForecast:
    daily_burn: Money = strawberry.field(description="Average spend per day over the basis, rounded half up to cents.")
    days_left: int = strawberry.field(
        description="Whole days until available reaches zero at that pace; 0 when it is zero or below already."
    )
    runs_out_at: datetime = strawberry.field(
        description="When available reaches zero at that pace; now when it already has."
    )
    basis_days: int = strawberry.field(description="How many days of spend the forecast averages.")


@strawberry.type(
    description="One alert threshold of a pool: crossing it stores a BREACHED event (and emails), coming back "
    "stores RECOVERED; optionally it bans purchases or freezes PAYG on the breach."
)
class QuotaThreshold(Node):
    _row: strawberry.Private[ThresholdRow]

    @classmethod
    def of(cls, row: ThresholdRow) -> QuotaThreshold:
        return cls(id=to_global_id("QuotaThreshold", row.id), _row=row)

    @strawberry.field(description="What the threshold compares.")
    def kind(self) -> ThresholdKind:
        return self._row.kind

    @strawberry.field(
        description="PERCENT_OF_QUOTA: the percent (1..100); RUNS_OUT_WITHIN_DAYS: the days (1..365); null for "
        "AVAILABLE_BELOW."
    )
    def value(self) -> int | None:
        return None if self._row.kind is ThresholdKind.AVAILABLE_BELOW else self._row.value

    @strawberry.field(description="AVAILABLE_BELOW: the amount available must stay at or above; null otherwise.")
    def amount(self) -> Money | None:
        return Money(self._row.value) if self._row.kind is ThresholdKind.AVAILABLE_BELOW else None

    @strawberry.field(description="How serious a breach is; shown in its events and emails.")
    def severity(self) -> AlertSeverity:
        return self._row.severity

    @strawberry.field(
        description="Who gets the BREACHED emails; null means the partner's alert emails. Always null for "
        "END_USER tokens: the partner's people's addresses are the partner's business."
    )
    def recipients(self, info: Info) -> list[str] | None:
        actor = info.context.require_actor()
        if actor.is_end_user or self._row.recipients is None:
            return None
        return list(self._row.recipients)

    @strawberry.field(description="What the system does to the pool owner (and its sub-accounts) on a breach.")
    def action(self) -> ThresholdAction | None:
        return self._row.action

    @strawberry.field(description="True: a breach stores the action in pendingActions for an operator to approve.")
    def requires_approval(self) -> bool:
        return self._row.requires_approval

    @strawberry.field(description="True while the pool is on the breached side (since the last crossing).")
    def breached(self) -> bool:
        return bool(self._row.below)


async def _pool_account(root: Quota, info: Info) -> Annotated[EndUser, strawberry.lazy("uidhub.schema.accounts")]:
    # lazy: uidhub.schema.accounts (or .tempcredit) imports this module (the types refer to each other)
    from uidhub.schema.accounts import required_end_user

    return await required_end_user(info, root._owner_id)


@strawberry.type(description="A quota pool (credit line); sub-accounts share their master's.")
class Quota:
    # A field declared here rather than as a method keeps its place first in the SDL.
    account: Annotated[EndUser, strawberry.lazy("uidhub.schema.accounts")] = strawberry.field(
        resolver=_pool_account,
        description="The account that owns this pool (the master for sub-accounts). An END_USER token of a "
        "sub-account may not see its master: it gets a limited view (empty uid, id of no node, no nickname, "
        "email, remarks, instances, audit entries or credit alert).",
    )
    # The amounts are plain values computed once in `of`: a resolver method per field costs strawberry's
    # and graphql-core's resolver machinery on each of a list page's hundreds of quota fields.
    amount: Money = strawberry.field(description="The credit line: the most the pool may spend.")
    consumed_deducted: Money = strawberry.field(description="Consumed and already deducted.")
    consumed_undeducted: Money = strawberry.field(description="Consumed but not yet deducted.")
    available: Money = strawberry.field(
        description="What the pool may still spend: amount - consumedDeducted - consumedUndeducted; "
        "negative means an outstanding payment."
    )
    outstanding_amount: Money = strawberry.field(description="The outstanding payment: max(0, -available).")
    warning_threshold_percent: int | None = strawberry.field(description="1..100, or null when no warning is set.")
    warning_level: Money | None = strawberry.field(
        description="The warning level: amount * warningThresholdPercent / 100, rounded half up to cents."
    )
    below_warning_level: bool = strawberry.field(description="True while available is below the warning level.")
    _pool: strawberry.Private[PoolLike]
    _owner_id: strawberry.Private[int]

    @classmethod
    def of(cls, pool: PoolLike, owner_id: int) -> Quota:
        available = pool.available_cents
        level = rules.warning_level(pool.amount_cents, pool.warning_percent)
        return cls(
            amount=Money(pool.amount_cents),
            consumed_deducted=Money(pool.deducted_cents),
            consumed_undeducted=Money(pool.undeducted_cents),
            available=Money(available),
            outstanding_amount=Money(max(0, -available)),
            warning_threshold_percent=pool.warning_percent,
            warning_level=None if level is None else Money(level),
            below_warning_level=rules.below_warning(available, pool.amount_cents, pool.warning_percent),
            _pool=pool,
            _owner_id=owner_id,
        )

    @strawberry.field(description="The run-out forecast from recent spend; null when the pool spent nothing then.")
    async def forecast(
        self,
        info: Info,
        basis_days: Annotated[
            int, strawberry.argument(description="Days of spend to average, 1 to 90; by default 7.")
        ] = forecasts.DEFAULT_BASIS_DAYS,
    ) -> QuotaForecast | None:
        if not 1 <= basis_days <= forecasts.MAX_BASIS_DAYS:
            raise InvalidArgument(f"`basisDays` must be 1 to {forecasts.MAX_BASIS_DAYS}.")
        spent, now = await info.context.loaders.recent_spend.load((self._pool.id, basis_days))
        result = forecasts.forecast(self._pool.available_cents, spent, basis_days, now)
        if result is None:
            return None
        return QuotaForecast(
            daily_burn=Money(result.daily_burn_cents),
            days_left=result.days_left,
            runs_out_at=result.runs_out_at,
            basis_days=result.basis_days,
        )

    @strawberry.field(
        description="The ACTIVE temporary credits included in `amount`, soonest end first (at most "
        f"{MAX_ACTIVE_CREDITS} per pool)."
    )
    async def temporary_credits(
        self, info: Info
    ) -> list[Annotated[TemporaryCredit, strawberry.lazy("uidhub.schema.tempcredit")]]:
        # lazy: uidhub.schema.accounts (or .tempcredit) imports this module (the types refer to each other)
        from uidhub.schema.tempcredit import TemporaryCredit

        rows = await info.context.loaders.temporary_credits.load(self._pool.id)
        return [TemporaryCredit.of(row) for row in rows]

    @strawberry.field(
        description="The pool's alert thresholds (at most 10), oldest first; the first PERCENT_OF_QUOTA one is "
        "the warning of warningThresholdPercent."
    )
    async def thresholds(self, info: Info) -> list[QuotaThreshold]:
        rows = await info.context.loaders.thresholds.load(self._pool.id)
        return [QuotaThreshold.of(row) for row in rows]

    @strawberry.field(description="Newest first; `since` defaults to six months before now.")
    async def adjustments(
        self,
        info: Info,
        first: Annotated[int | None, strawberry.argument(description="At most 100.")] = 20,
        after: Annotated[str | None, strawberry.argument(description="Cursor of the last record seen.")] = None,
        since: Annotated[datetime | None, strawberry.argument(description="From (inclusive).")] = None,
        until: Annotated[datetime | None, strawberry.argument(description="Until (exclusive).")] = None,
        operation_type: Annotated[
            QuotaOperationType | None, strawberry.argument(description="Only this kind of record.")
        ] = None,
    ) -> QuotaAdjustmentConnection:
        limit = check_first(first)
        after_id = decode_id_cursor(after, quota_ops.ADJUSTMENT_CURSOR)
        # Through a loader: under a list of accounts all pools' records come in one windowed query.
        rows, total = await info.context.loaders.adjustment_page.load(
            (self._pool.id, limit, after_id, (since, until, operation_type))
        )
        return QuotaAdjustmentConnection.of(page_of_rows(rows, limit, after_id, quota_ops.ADJUSTMENT_CURSOR, total))


# ---------------------------------------------------------------- node(id:)


async def _resolve_adjustment(info: Info, pk: int) -> QuotaAdjustment | None:
    """A record is visible when the viewer may see an account spending from its pool."""
    session = await info.context.session()
    actor = info.context.require_actor()
    row = await session.get(AdjustmentRow, pk)
    if row is None:
        return None
    visible = await session.scalar(
        select(Account.id).where(Account.pool_id == row.pool_id, actor.account_scope()).limit(1)
    )
    return QuotaAdjustment.of(row) if visible is not None else None


register_node("QuotaAdjustment", _resolve_adjustment)


async def _resolve_threshold(info: Info, pk: int) -> QuotaThreshold | None:
    """A threshold is visible when the viewer may see an account spending from its pool."""
    session = await info.context.session()
    actor = info.context.require_actor()
    row = await session.get(ThresholdRow, pk)
    if row is None:
        return None
    visible = await session.scalar(
        select(Account.id).where(Account.pool_id == row.pool_id, actor.account_scope()).limit(1)
    )
    return QuotaThreshold.of(row) if visible is not None else None


register_node("QuotaThreshold", _resolve_threshold)


# ---------------------------------------------------------------- mutations


@strawberry.type(description="Result of a quota mutation.")
class QuotaPayload:
    quota: Quota | None = strawberry.field(description="The pool after the change; null on errors.")
    user_errors: list[UserError] = strawberry.field(description="Why nothing changed; empty on success.")


def quota_errors(errors: list[UserError]) -> QuotaPayload:
    return QuotaPayload(quota=None, user_errors=errors)


def quota_payload(result: PoolResult) -> QuotaPayload:
    return QuotaPayload(quota=Quota.of(result.pool, result.owner_id), user_errors=[])


@strawberry.input(description="Set a master's or standalone account's quota amount.")
class SetQuotaAmountInput:
    uid: str = strawberry.field(description="The pool owner (a sub-account is QUOTA_MANAGED_BY_MASTER).")
    amount: Money = strawberry.field(description="The new credit line: at least 0.00 and below 10^12.")
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="Optional: a repeat with the same input returns the first result and changes nothing.",
    )


@strawberry.input(description="Set or remove the partner's warning threshold on a pool.")
class SetWarningThresholdInput:
    uid: str = strawberry.field(description="The pool owner (a sub-account is QUOTA_MANAGED_BY_MASTER).")
    percent: int | None = strawberry.field(default=None, description="1..100; null removes the warning.")


@strawberry.input(description="An amount of consumption, deduction or repayment on an account's pool.")
class AmountInput:
    uid: str = strawberry.field(description="The account (a sub-account acts on its master's pool).")
    amount: Money = strawberry.field(description="Greater than zero.")
    idempotency_key: str = strawberry.field(
        description=(
            "Repeating a key with the same input returns the first result and changes nothing; "
            "with a different input it is IDEMPOTENCY_CONFLICT."
        )
    )


@strawberry.input(description="What an alert threshold is (adding and changing one take the whole of it).")
class QuotaThresholdFields:
    kind: ThresholdKind = strawberry.field(description="What the threshold compares.")
    value: int | None = strawberry.field(
        default=None,
        description="PERCENT_OF_QUOTA: percent 1..100; RUNS_OUT_WITHIN_DAYS: days 1..365; omit for AVAILABLE_BELOW.",
    )
    amount: Money | None = strawberry.field(
        default=None, description="AVAILABLE_BELOW only: alert when available falls below this amount."
    )
    severity: AlertSeverity = strawberry.field(
        default=AlertSeverity.WARNING, description="Shown in the events and emails; WARNING by default."
    )
    recipients: list[str] | None = strawberry.field(
        default=None, description="At most 100 addresses for the BREACHED emails; null: the partner's alert emails."
    )
    action: ThresholdAction | None = strawberry.field(
        default=None, description="Applied to the pool owner and its sub-accounts on a breach (method SYSTEM)."
    )
    requires_approval: bool = strawberry.field(
        default=False, description="Needs an action: a breach stores it in pendingActions instead of applying it."
    )

    def spec(self) -> threshold_ops.ThresholdSpec:
        return threshold_ops.ThresholdSpec(
            kind=self.kind,
            value=self.value,
            amount_cents=self.amount,
            severity=self.severity,
            recipients=self.recipients,
            action=self.action,
            requires_approval=self.requires_approval,
        )


@strawberry.input(description="Add an alert threshold to a pool.")
class AddQuotaThresholdInput:
    uid: str = strawberry.field(description="The pool owner (a sub-account is QUOTA_MANAGED_BY_MASTER).")
    threshold: QuotaThresholdFields = strawberry.field(description="The threshold.")


@strawberry.input(description="Change an alert threshold: everything it is, replaced.")
class UpdateQuotaThresholdInput:
    id: strawberry.ID = strawberry.field(description="The QuotaThreshold id.")
    threshold: QuotaThresholdFields = strawberry.field(description="What it becomes; its breached side is kept.")


@strawberry.input(description="Remove an alert threshold.")
class RemoveQuotaThresholdInput:
    id: strawberry.ID = strawberry.field(description="The QuotaThreshold id.")


def _threshold_pk(global_id: str) -> int:
    parsed = from_global_id(global_id)
    if parsed is None or parsed[0] != "QuotaThreshold":
        return 0  # no row has id 0: NOT_FOUND like any unknown id
    return parsed[1]


@strawberry.type
class QuotaMutations:
    @strawberry.mutation(
        description="Add an alert threshold (OPERATOR, ADMIN; at most 10 per pool, TOO_MANY_THRESHOLDS beyond). "
        "Evaluated at once: added on the breached side, it is BREACHED at once."
    )
    async def add_quota_threshold(
        self, info: Info, input: Annotated[AddQuotaThresholdInput, INPUT_ARG]
    ) -> QuotaPayload:
        async def op(session: AsyncSession, actor: Actor) -> QuotaPayload:
            return quota_payload(await threshold_ops.add_threshold(session, actor, input.uid, input.threshold.spec()))

        return await mutate(info, op, quota_errors)

    @strawberry.mutation(description="Change an alert threshold; the pool is re-evaluated at once.")
    async def update_quota_threshold(
        self, info: Info, input: Annotated[UpdateQuotaThresholdInput, INPUT_ARG]
    ) -> QuotaPayload:
        async def op(session: AsyncSession, actor: Actor) -> QuotaPayload:
            return quota_payload(
                await threshold_ops.change_threshold(session, actor, _threshold_pk(input.id), input.threshold.spec())
            )

        return await mutate(info, op, quota_errors)

    @strawberry.mutation(description="Remove an alert threshold (no RECOVERED event: it is simply gone).")
    async def remove_quota_threshold(
        self, info: Info, input: Annotated[RemoveQuotaThresholdInput, INPUT_ARG]
    ) -> QuotaPayload:
        async def op(session: AsyncSession, actor: Actor) -> QuotaPayload:
            return quota_payload(await threshold_ops.remove_threshold(session, actor, _threshold_pk(input.id)))

        return await mutate(info, op, quota_errors)

    @strawberry.mutation(
        description="Set the quota amount: QUOTA_CREATE the first time, QUOTA_ADJUSTMENT afterwards, "
        "nothing for the same amount."
    )
    async def set_quota_amount(self, info: Info, input: Annotated[SetQuotaAmountInput, INPUT_ARG]) -> QuotaPayload:
        async def op(session: AsyncSession, actor: Actor) -> QuotaPayload:
            return quota_payload(
                await quota_ops.set_quota_amount(session, actor, input.uid, input.amount, input.idempotency_key)
            )

        return await mutate(info, op, quota_errors)

    @strawberry.mutation(description="Set (1..100) or remove (null) the warning threshold; re-evaluates at once.")
    async def set_warning_threshold(
        self, info: Info, input: Annotated[SetWarningThresholdInput, INPUT_ARG]
    ) -> QuotaPayload:
        async def op(session: AsyncSession, actor: Actor) -> QuotaPayload:
            return quota_payload(await quota_ops.set_warning_threshold(session, actor, input.uid, input.percent))

        return await mutate(info, op, quota_errors)

    @strawberry.mutation(description="Add consumption to the pool's consumed-undeducted.")
    async def record_consumption(self, info: Info, input: Annotated[AmountInput, INPUT_ARG]) -> QuotaPayload:
        return await _balance(info, quota_ops.BalanceOp.RECORD, input)

    @strawberry.mutation(description="Move an amount from consumed-undeducted to consumed-deducted.")
    async def deduct_consumption(self, info: Info, input: Annotated[AmountInput, INPUT_ARG]) -> QuotaPayload:
        return await _balance(info, quota_ops.BalanceOp.DEDUCT, input)

    @strawberry.mutation(description="Repay an outstanding payment: lowers consumed-deducted.")
    async def repay_outstanding(self, info: Info, input: Annotated[AmountInput, INPUT_ARG]) -> QuotaPayload:
        return await _balance(info, quota_ops.BalanceOp.REPAY, input)


async def _balance(info: Info, balance_op: quota_ops.BalanceOp, input: AmountInput) -> QuotaPayload:
    async def op(session: AsyncSession, actor: Actor) -> QuotaPayload:
        return quota_payload(
            await quota_ops.change_balance(session, actor, balance_op, input.uid, input.amount, input.idempotency_key)
        )

    return await mutate(info, op, quota_errors)

"""Temporary credit: grants that raise a pool's amount until a time, and their revoking."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import TemporaryCredit as CreditRow
from uidhub.models.enums import OperationMethod, TemporaryCreditStatus
from uidhub.resolvers import tempcredit as credit_ops
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.pool_amounts import PoolResult
from uidhub.schema.common import INPUT_ARG, Node, UserError, from_global_id, mutate, to_global_id
from uidhub.schema.context import Info
from uidhub.schema.enums import describe
from uidhub.schema.partners import Operator
from uidhub.schema.quota import Quota
from uidhub.schema.registry import register_node
from uidhub.schema.scalars import Money

describe(
    TemporaryCreditStatus,
    "Where a temporary credit stands.",
    {
        "ACTIVE": "Granted; the pool's amount includes it until `until`.",
        "EXPIRED": "Reverted by the system at `until` (or at start-up, if the server was down then).",
        "REVOKED": "Reverted early by an operator (revokeTemporaryCredit).",
    },
)


@strawberry.type(
    description="A raise of a pool's quota amount that the system lowers again by the same amount at `until`."
)
class TemporaryCredit(Node):
    amount: Money = strawberry.field(description="How much the grant added to the pool's amount.")
    until: datetime = strawberry.field(description="When the system takes the amount off again.")
    reason: str = strawberry.field(description="Why it was granted, as the operator wrote it.")
    status: TemporaryCreditStatus = strawberry.field(description="ACTIVE until reverted; then EXPIRED or REVOKED.")
    granted_at: datetime = strawberry.field(description="When it was granted.")
    method: OperationMethod = strawberry.field(description="How it was granted: PLATFORM or API.")
    operator: Operator | None = strawberry.field(description="Who granted it.")
    ended_at: datetime | None = strawberry.field(description="When it was reverted; null while ACTIVE.")
    reverted_amount: Money | None = strawberry.field(
        description="What the revert took off the amount: `amount`, or less when the amount had been lowered "
        "below it meanwhile (never below 0.00); 0.00 when the account was TERMINATED or DELETED by then. Null "
        "while ACTIVE."
    )
    ended_by: Operator | None = strawberry.field(
        description="Who revoked it early; null while ACTIVE and for the system's revert at `until`."
    )

    @classmethod
    def of(cls, row: CreditRow) -> TemporaryCredit:
        return cls(
            id=to_global_id("TemporaryCredit", row.id),
            amount=Money(row.amount_cents),
            until=row.ends_at,
            reason=row.reason,
            status=row.status,
            granted_at=row.created_at,
            method=row.method,
            operator=Operator.from_columns(row.operator_uid, row.operator_name, row.operator_is_ram, row.operator_role),
            ended_at=row.ended_at,
            reverted_amount=None if row.reverted_cents is None else Money(row.reverted_cents),
            ended_by=Operator.from_columns(row.ended_by_uid, row.ended_by_name, row.ended_by_is_ram, row.ended_by_role),
        )


async def _resolve_credit(info: Info, pk: int) -> TemporaryCredit | None:
    """Visible like a quota record: when the viewer may see an account spending from its pool."""
    session = await info.context.session()
    row = await credit_ops.find_visible(session, info.context.require_actor(), pk)
    return TemporaryCredit.of(row) if row is not None else None


register_node("TemporaryCredit", _resolve_credit)


# ---------------------------------------------------------------- mutations


@strawberry.input(
    description="Raise a pool's amount now and lower it again by the same amount later. Give `until` or "
    "`durationHours`, not both."
)
class GrantTemporaryCreditInput:
    uid: str = strawberry.field(description="The pool owner (a sub-account is QUOTA_MANAGED_BY_MASTER).")
    amount: Money = strawberry.field(
        description="Added to the amount now and taken off at the end: greater than zero; the amount with it "
        "stays below 10^12."
    )
    reason: str = strawberry.field(
        description=f"Why (required): one line, at most {credit_ops.REASON_MAX_CHARS} characters, no control "
        "characters. Kept on the grant, its quota records and audit entries."
    )
    until: datetime | None = strawberry.field(
        default=None, description="When to revert: in the future, at most 366 days ahead."
    )
    duration_hours: int | None = strawberry.field(
        default=None,
        description=f"Instead of `until`: revert this many hours from now (1 to {credit_ops.MAX_DURATION_HOURS}).",
    )
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="Optional: a repeat with the same input returns the first result and changes nothing.",
    )


@strawberry.input(description="Revert an ACTIVE temporary credit now, instead of at its `until`.")
class RevokeTemporaryCreditInput:
    id: strawberry.ID = strawberry.field(description="The temporary credit's id.")


@strawberry.type(description="Result of grantTemporaryCredit or revokeTemporaryCredit.")
class TemporaryCreditPayload:
    temporary_credit: TemporaryCredit | None = strawberry.field(
        description="The grant as it is after the mutation; null on errors."
    )
    quota: Quota | None = strawberry.field(description="The pool after the change; null on errors.")
    user_errors: list[UserError] = strawberry.field(description="Why nothing changed; empty on success.")


def _errors(errors: list[UserError]) -> TemporaryCreditPayload:
    return TemporaryCreditPayload(temporary_credit=None, quota=None, user_errors=errors)


def _payload(credit: CreditRow, pool: PoolResult) -> TemporaryCreditPayload:
    return TemporaryCreditPayload(
        temporary_credit=TemporaryCredit.of(credit),
        quota=Quota.of(pool.pool, pool.owner_id),
        user_errors=[],
    )


@strawberry.type
class TemporaryCreditMutations:
    @strawberry.mutation(
        description="Grant a temporary credit (OPERATOR, ADMIN): the pool's amount goes up now and down by the "
        "same amount at `until`, by the system (method SYSTEM), exactly once. The revert subtracts the grant from "
        "the amount as it is then, never below 0.00, so an operator's change in between is kept. Both moments "
        "write a quota record and an audit entry with the reason and re-evaluate credit control and every "
        "threshold."
    )
    async def grant_temporary_credit(
        self, info: Info, input: Annotated[GrantTemporaryCreditInput, INPUT_ARG]
    ) -> TemporaryCreditPayload:
        async def op(session: AsyncSession, actor: Actor) -> TemporaryCreditPayload:
            result = await credit_ops.grant(
                session,
                actor,
                uid=input.uid,
                amount_cents=input.amount,
                until=input.until,
                duration_hours=input.duration_hours,
                reason=input.reason,
                idempotency_key=input.idempotency_key,
            )
            return _payload(result.credit, result.pool)

        return await mutate(info, op, _errors)

    @strawberry.mutation(
        description="Revert an ACTIVE temporary credit now (OPERATOR, ADMIN), exactly as the system would at its "
        "`until`; the system then does nothing more for it."
    )
    async def revoke_temporary_credit(
        self, info: Info, input: Annotated[RevokeTemporaryCreditInput, INPUT_ARG]
    ) -> TemporaryCreditPayload:
        async def op(session: AsyncSession, actor: Actor) -> TemporaryCreditPayload:
            parsed = from_global_id(input.id)
            pk = parsed[1] if parsed is not None and parsed[0] == "TemporaryCredit" else None
            result = await credit_ops.revoke(session, actor, pk)
            return _payload(result.credit, result.pool)

        return await mutate(info, op, _errors)

"""Pending automatic actions: what a threshold with `requiresApproval` asked for, and the operator's decision."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account
from uidhub.models import PendingAction as PendingRow
from uidhub.models.enums import AlertSeverity, PendingActionStatus, ThresholdAction
from uidhub.resolvers import thresholds as ops
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.pagination import Page
from uidhub.schema.accounts import ARG_AFTER, ARG_FIRST, EndUser, required_end_user
from uidhub.schema.common import INPUT_ARG, Node, PageInfo, UserError, from_global_id, mutate, to_global_id
from uidhub.schema.context import Info
from uidhub.schema.registry import register_node


@strawberry.type(description="An automatic action a threshold breach asked for, waiting for (or given) a decision.")
class PendingAction(Node):
    _row: strawberry.Private[PendingRow]

    @classmethod
    def of(cls, row: PendingRow) -> PendingAction:
        return cls(id=to_global_id("PendingAction", row.id), _row=row)

    @strawberry.field(description="What would be applied to the pool owner and its sub-accounts.")
    def action(self) -> ThresholdAction:
        return self._row.action

    @strawberry.field(description="Where the decision stands.")
    def status(self) -> PendingActionStatus:
        return self._row.status

    @strawberry.field(description="The severity of the threshold that asked for it.")
    def severity(self) -> AlertSeverity:
        return self._row.severity

    @strawberry.field(description="The QuotaThreshold whose breach asked for it (it may have been removed since).")
    def threshold_id(self) -> strawberry.ID | None:
        row = self._row
        return to_global_id("QuotaThreshold", row.threshold_id) if row.threshold_id is not None else None

    @strawberry.field(description="The pool owner the action applies to.")
    async def account(self, info: Info) -> EndUser:
        return await required_end_user(info, self._row.account_id)

    @strawberry.field(description="When the breach stored it.")
    def created_at(self) -> datetime:
        return self._row.created_at

    @strawberry.field(description="When an operator approved or dismissed it; null while PENDING.")
    def decided_at(self) -> datetime | None:
        return self._row.decided_at

    @strawberry.field(description="The UID of the operator who decided; null while PENDING.")
    def decided_by(self) -> str | None:
        return self._row.decided_by


@strawberry.type(description="An edge of a PendingActionConnection.")
class PendingActionEdge:
    cursor: str = strawberry.field(description="Pass as `after` to continue after this action.")
    node: PendingAction = strawberry.field(description="The pending action.")


@strawberry.type(description="Pending actions, newest first.")
class PendingActionConnection:
    edges: list[PendingActionEdge] = strawberry.field(description="This page's actions.")
    page_info: PageInfo = strawberry.field(description="Paging state.")
    _page: strawberry.Private[Page[PendingRow]]

    @strawberry.field(description="Actions matching the arguments, over all pages.")
    async def total_count(self) -> int:
        return await self._page.count()


@strawberry.input(description="Approve or dismiss a pending action.")
class DecidePendingActionInput:
    id: strawberry.ID = strawberry.field(description="The PendingAction id.")


@strawberry.type(description="Result of a decision on a pending action.")
class PendingActionPayload:
    pending_action: PendingAction | None = strawberry.field(description="The action after it; null on errors.")
    user_errors: list[UserError] = strawberry.field(description="Why nothing changed; empty on success.")


def _errors(errors: list[UserError]) -> PendingActionPayload:
    return PendingActionPayload(pending_action=None, user_errors=errors)


def _pk(global_id: str) -> int:
    parsed = from_global_id(global_id)
    return parsed[1] if parsed is not None and parsed[0] == "PendingAction" else 0


@strawberry.type
class ThresholdQueries:
    @strawberry.field(description="Automatic actions of your pools' thresholds, newest first; PENDING by default.")
    async def pending_actions(
        self,
        info: Info,
        first: Annotated[int | None, ARG_FIRST] = 20,
        after: Annotated[str | None, ARG_AFTER] = None,
        status: Annotated[
            PendingActionStatus | None,
            strawberry.argument(description="Only this status; null for all."),
        ] = PendingActionStatus.PENDING,
    ) -> PendingActionConnection:
        actor = info.context.require_actor()
        session = await info.context.session()
        page = await ops.list_pending(session, actor, first=first, after=after, status=status)
        return PendingActionConnection(
            edges=[
                PendingActionEdge(cursor=c, node=PendingAction.of(r))
                for r, c in zip(page.items, page.cursors, strict=True)
            ],
            page_info=PageInfo.of(page),
            _page=page,
        )


@strawberry.type
class ThresholdMutations:
    @strawberry.mutation(
        description="Approve a PENDING action (OPERATOR, ADMIN): it is applied now, with you as the operator."
    )
    async def approve_pending_action(
        self, info: Info, input: Annotated[DecidePendingActionInput, INPUT_ARG]
    ) -> PendingActionPayload:
        async def op(session: AsyncSession, actor: Actor) -> PendingActionPayload:
            row = await ops.decide(session, actor, _pk(input.id), approve=True)
            return PendingActionPayload(pending_action=PendingAction.of(row), user_errors=[])

        return await mutate(info, op, _errors)

    @strawberry.mutation(description="Dismiss a PENDING action (OPERATOR, ADMIN): nothing is applied.")
    async def dismiss_pending_action(
        self, info: Info, input: Annotated[DecidePendingActionInput, INPUT_ARG]
    ) -> PendingActionPayload:
        async def op(session: AsyncSession, actor: Actor) -> PendingActionPayload:
            row = await ops.decide(session, actor, _pk(input.id), approve=False)
            return PendingActionPayload(pending_action=PendingAction.of(row), user_errors=[])

        return await mutate(info, op, _errors)


async def _resolve_pending(info: Any, pk: int) -> PendingAction | None:
    actor = info.context.require_actor()
    session = await info.context.session()
    row = await session.get(PendingRow, pk)
    if row is None or row.partner_id != actor.partner_id:
        return None
    account = await session.get(Account, row.account_id)
    return PendingAction.of(row) if actor.sees(account) else None


register_node("PendingAction", _resolve_pending)

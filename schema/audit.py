"""Audit entries."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry.scalars import JSON

from models import AuditEntry as AuditRow
from models.enums import AuditAction, OperationMethod
from resolvers.pagination import Page
from schema.common import Node, PageInfo, to_global_id
from schema.context import Info
from schema.partners import Operator

if TYPE_CHECKING:
    from schema.accounts import EndUser


@strawberry.type(description="Append-only: entries are never updated or deleted through the API.")
class AuditEntry(Node):
    action: AuditAction = strawberry.field(description="What changed.")
    occurred_at: datetime = strawberry.field(description="When it changed (commit time of the change).")
    operator: Operator | None = strawberry.field(description="Null for SYSTEM actions.")
    method: OperationMethod = strawberry.field(description="PLATFORM, API or SYSTEM.")
    before: JSON | None = strawberry.field(description="The changed values before, by field name.")
    after: JSON | None = strawberry.field(description="The changed values after, by field name.")
    reason: str | None = strawberry.field(description="Why, as given by the operator.")
    _row: strawberry.Private[AuditRow]

    @strawberry.field(description="The account the entry is about.")
    async def account(self, info: Info) -> Annotated[EndUser, strawberry.lazy("schema.accounts")]:
        from schema.accounts import EndUser

        return EndUser.of(await info.context.loaders.account.load(self._row.account_id))

    @strawberry.field(description="Set on a sub-account's entry when the change cascaded from its master.")
    async def cascade_from(self, info: Info) -> Annotated[EndUser, strawberry.lazy("schema.accounts")] | None:
        from schema.accounts import EndUser

        if self._row.cascade_from_id is None:
            return None
        row = await info.context.loaders.account.load(self._row.cascade_from_id)
        return EndUser.of(row) if row else None

    @classmethod
    def of(cls, row: AuditRow) -> AuditEntry:
        return cls(
            id=to_global_id("AuditEntry", row.id),
            action=row.action,
            occurred_at=row.occurred_at,
            operator=Operator.from_columns(row.operator_uid, row.operator_name, row.operator_is_ram, row.operator_role),
            method=row.method,
            before=row.before,
            after=row.after,
            reason=row.reason,
            _row=row,
        )


@strawberry.type(description="An edge of an AuditEntryConnection.")
class AuditEntryEdge:
    cursor: str = strawberry.field(description="Pass as `after` to continue after this entry.")
    node: AuditEntry = strawberry.field(description="The entry.")


@strawberry.type(description="Audit entries, newest first.")
class AuditEntryConnection:
    edges: list[AuditEntryEdge] = strawberry.field(description="This page's entries.")
    page_info: PageInfo = strawberry.field(description="Paging state.")
    total_count: int = strawberry.field(description="Entries matching the arguments, over all pages.")

    @classmethod
    async def of(cls, page: Page[AuditRow]) -> AuditEntryConnection:
        return cls(
            edges=[
                AuditEntryEdge(cursor=c, node=AuditEntry.of(r)) for r, c in zip(page.items, page.cursors, strict=True)
            ],
            page_info=PageInfo.of(page),
            total_count=await page.count(),
        )

"""Audit entries."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.scalars import JSON

from uidhub.models import Account
from uidhub.models import AuditEntry as AuditRow
from uidhub.models.enums import AuditAction, OperationMethod, Role
from uidhub.resolvers.pagination import Page
from uidhub.schema.common import Node, PageInfo, to_global_id
from uidhub.schema.context import Info
from uidhub.schema.partners import Operator
from uidhub.schema.registry import register_node

if TYPE_CHECKING:
    from uidhub.schema.accounts import EndUser


#: Keys of an entry's values that name another account: shown to an END_USER token only when in its scope.
ACCOUNT_UID_KEYS = ("masterUid",)


def _names_hidden(value: Any) -> bool:
    return isinstance(value, dict) and any(value.get(key) is not None for key in ACCOUNT_UID_KEYS)


async def _masked_values(info: Info, value: dict[str, Any]) -> dict[str, Any]:
    uids = await info.context.visible_uids()
    return {k: (None if k in ACCOUNT_UID_KEYS and uids is not None and v not in uids else v) for k, v in value.items()}


async def _masked_operator(info: Info, operator: Operator) -> Operator | None:
    uids = await info.context.visible_uids()
    return operator if uids is None or operator.uid in uids else None


@strawberry.type(description="Append-only: entries are never updated or deleted through the API.")
class AuditEntry(Node):
    action: AuditAction = strawberry.field(description="What changed.")
    occurred_at: datetime = strawberry.field(description="When it changed (commit time of the change).")
    method: OperationMethod = strawberry.field(description="PLATFORM, API or SYSTEM.")
    reason: str | None = strawberry.field(description="Why, as given by the operator.")
    _row: strawberry.Private[AuditRow]

    # The next three answer synchronously for every viewer but an END_USER token,
    # whose view of other accounts' UIDs is masked (see `Context.visible_uids`).

    @strawberry.field(
        description="Null for SYSTEM actions, and for an END_USER token when the operator was an end user's "
        "token outside its scope (e.g. its master's)."
    )
    def operator(self, info: Info) -> Operator | None:
        row = self._row
        operator = Operator.from_columns(row.operator_uid, row.operator_name, row.operator_is_ram, row.operator_role)
        if operator is None or operator.role is not Role.END_USER or not info.context.require_actor().is_end_user:
            return operator
        return _masked_operator(info, operator)  # type: ignore[return-value]

    @strawberry.field(
        description="The changed values before, by field name. For an END_USER token, UIDs of accounts outside "
        "its scope (e.g. masterUid) are null."
    )
    def before(self, info: Info) -> JSON | None:
        return self._values(info, self._row.before)

    @strawberry.field(
        description="The changed values after, by field name. For an END_USER token, UIDs of accounts outside "
        "its scope (e.g. masterUid) are null."
    )
    def after(self, info: Info) -> JSON | None:
        return self._values(info, self._row.after)

    def _values(self, info: Info, value: Any) -> Any:
        if not _names_hidden(value) or not info.context.require_actor().is_end_user:
            return value
        return _masked_values(info, value)

    @strawberry.field(description="The account the entry is about.")
    async def account(self, info: Info) -> Annotated[EndUser, strawberry.lazy("uidhub.schema.accounts")]:
        # lazy: uidhub.schema.accounts imports this module (EndUser shows its audit entries)
        from uidhub.schema.accounts import required_end_user

        return await required_end_user(info, self._row.account_id)

    @strawberry.field(
        description="Set on a sub-account's entry when the change cascaded from its master; null when the master "
        "is outside the viewer's scope (an END_USER token of the sub-account)."
    )
    async def cascade_from(self, info: Info) -> Annotated[EndUser, strawberry.lazy("uidhub.schema.accounts")] | None:
        # lazy: uidhub.schema.accounts imports this module (EndUser shows its audit entries)
        from uidhub.schema.accounts import scoped_end_user

        return await scoped_end_user(info, self._row.cascade_from_id)

    @classmethod
    def of(cls, row: AuditRow) -> AuditEntry:
        return cls(
            id=to_global_id("AuditEntry", row.id),
            action=row.action,
            occurred_at=row.occurred_at,
            method=row.method,
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


async def _resolve_audit_entry(info: Info, pk: int) -> AuditEntry | None:
    """Visible when the viewer may see the entry's account."""
    actor = info.context.require_actor()
    session = await info.context.session()
    entry = await session.get(AuditRow, pk)
    if entry is None:
        return None
    account = await session.get(Account, entry.account_id)
    return AuditEntry.of(entry) if account is not None and actor.sees(account) else None


register_node("AuditEntry", _resolve_audit_entry)

"""Audit entries: written with every change, in its transaction; listed newest first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account, AuditEntry
from uidhub.models.enums import AuditAction, OperationMethod
from uidhub.notifications import log
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.pagination import Page, check_list, newest_first

CURSOR_KIND = "audit"


def record(
    session: AsyncSession,
    actor: Actor | None,
    account: Account,
    action: AuditAction,
    *,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
    cascade_from: Account | None = None,
) -> AuditEntry:
    """Append an audit entry to this transaction. `actor=None` is a SYSTEM change (no operator)."""
    entry = AuditEntry(
        partner_id=account.partner_id,
        account_id=account.id,
        action=action,
        method=actor.method if actor else OperationMethod.SYSTEM,
        before=before,
        after=after,
        reason=reason,
        cascade_from_id=cascade_from.id if cascade_from else None,
        **(actor.operator_fields() if actor else {}),
    )
    log.add_audit(session, entry)
    return entry


def diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only the keys whose value changed, as (before, after)."""
    keys = [k for k in after if before.get(k) != after[k]]
    return {k: before.get(k) for k in keys}, {k: after[k] for k in keys}


async def list_entries(
    session: AsyncSession,
    actor: Actor,
    *,
    first: int | None,
    after: str | None,
    account_id: int | None = None,
    actions: Sequence[AuditAction] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[AuditEntry]:
    """The actor's visible entries, newest first (ids increase in commit order)."""
    check_list(actions, "actions")
    conditions = [AuditEntry.partner_id == actor.partner_id]
    if actor.account_id is not None:
        visible = select(Account.id).where(actor.account_scope())
        conditions.append(AuditEntry.account_id.in_(visible))
    if account_id is not None:
        conditions.append(AuditEntry.account_id == account_id)
    if actions:
        conditions.append(AuditEntry.action.in_(list(actions)))
    if since is not None:
        conditions.append(AuditEntry.occurred_at >= since)
    if until is not None:
        conditions.append(AuditEntry.occurred_at < until)
    return await newest_first(session, AuditEntry, conditions, first=first, after=after, cursor_kind=CURSOR_KIND)

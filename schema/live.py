"""Live subscriptions over graphql-transport-ws: threshold breaches and audit entries.

Both follow the stored log (notifications.stream): `afterId` replays what was
stored after it, in id order, then live rows follow with no gap and no
duplicate. Without `afterId` a subscription starts at the newest stored row.
Rows are scoped like every read: the viewer's partner, and for END_USER
tokens its own account and its sub-accounts (re-evaluated on every read, so a
sub-account linked later is included).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Annotated, Any

import strawberry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Account, AlertEvent
from models import AuditEntry as AuditRow
from models.enums import AlertState
from notifications import stream
from resolvers import alerts as alert_ops
from resolvers.actor import Actor, Permission
from resolvers.pagination import MAX_INPUT_LIST, InvalidArgument
from schema.alerts import QuotaAlertEvent
from schema.audit import AuditEntry
from schema.common import from_global_id
from schema.context import Context, Info

ALERTS_TOPIC = "alerts:{partner_id}"
AUDIT_TOPIC = "audit:{partner_id}"


def _after(after_id: strawberry.ID | None, type_name: str) -> int | None:
    if after_id is None:
        return None
    parsed = from_global_id(after_id)
    if parsed is None or parsed[0] != type_name:
        raise InvalidArgument(f"`afterId` must be the id of a {type_name}.")
    return parsed[1]


def _own_accounts(actor: Actor) -> Any:
    """Ids of the accounts an END_USER token may see (None for every other role: the whole partner)."""
    if actor.account_id is None:
        return None
    return select(Account.id).where(actor.account_scope()).scalar_subquery()


async def _start(info: Info, model: Any, after: int | None) -> int:
    return after if after is not None else await stream.max_id(info.context, model)


@strawberry.type(description="Live updates of the alerts and audit log.")
class LiveSubscriptions:
    @strawberry.subscription(
        description=(
            "BREACHED events of the viewer's partner; with afterId, stored events after it are replayed first, "
            "then live ones, with no gap and no duplicate."
        )
    )
    async def quota_threshold_breached(
        self,
        info: Info,
        after_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="A QuotaAlertEvent id: replay the stored events after it first."),
        ] = None,
    ) -> AsyncGenerator[QuotaAlertEvent, None]:
        actor = info.context.require_actor()
        actor.require(Permission.READ)
        start = await _start(info, AlertEvent, _after(after_id, "QuotaAlertEvent"))
        # The same scope as the alertEvents query: the partner's, and an END_USER's own accounts only.
        conditions = alert_ops.event_conditions(actor, states=[AlertState.BREACHED])

        async def fetch(session: AsyncSession, last_seen: int, limit: int) -> Sequence[AlertEvent]:
            query = select(AlertEvent).where(*conditions, AlertEvent.id > last_seen)
            return (await session.scalars(query.order_by(AlertEvent.id).limit(limit))).all()

        partner_id = actor.partner_id

        async def feed_fetch(session: AsyncSession, position: int, limit: int) -> Sequence[AlertEvent]:
            query = select(AlertEvent).where(
                AlertEvent.partner_id == partner_id, AlertEvent.state == AlertState.BREACHED, AlertEvent.id > position
            )
            return (await session.scalars(query.order_by(AlertEvent.id).limit(limit))).all()

        async def accept(child: Context, row: AlertEvent) -> bool:
            if actor.account_id is None:
                return True
            account = await child.accounts.load(row.account_id)  # None outside the viewer's scope
            return alert_ops.event_visible(actor, row, account)

        return stream.follow(
            info.context,
            key=f"breached:{partner_id}",
            topic=ALERTS_TOPIC.format(partner_id=partner_id),
            model=AlertEvent,
            after_id=start,
            fetch=fetch,
            feed_fetch=feed_fetch,
            accept=accept,
            convert=QuotaAlertEvent.of,
        )

    @strawberry.subscription(
        description="Audit entries as they are written, optionally for some accounts only; afterId as above."
    )
    async def account_events(
        self,
        info: Info,
        uids: Annotated[
            list[str] | None,
            strawberry.argument(description=f"Only these accounts' entries (at most {MAX_INPUT_LIST} UIDs)."),
        ] = None,
        after_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="An AuditEntry id: replay the stored entries after it first."),
        ] = None,
    ) -> AsyncGenerator[AuditEntry, None]:
        actor = info.context.require_actor()
        actor.require(Permission.READ)
        if uids is not None and len(uids) > MAX_INPUT_LIST:
            raise InvalidArgument(f"`uids` takes at most {MAX_INPUT_LIST} UIDs.")
        start = await _start(info, AuditRow, _after(after_id, "AuditEntry"))
        own = _own_accounts(actor)
        wanted = None
        if uids is not None:
            wanted = (
                select(Account.id).where(Account.uid.in_(sorted(set(uids))), actor.account_scope()).scalar_subquery()
            )

        async def fetch(session: AsyncSession, last_seen: int, limit: int) -> Sequence[AuditRow]:
            query = select(AuditRow).where(AuditRow.partner_id == actor.partner_id, AuditRow.id > last_seen)
            if own is not None:
                query = query.where(AuditRow.account_id.in_(own))
            if wanted is not None:
                query = query.where(AuditRow.account_id.in_(wanted))
            return (await session.scalars(query.order_by(AuditRow.id).limit(limit))).all()

        partner_id = actor.partner_id
        uid_set = set(uids) if uids is not None else None

        async def feed_fetch(session: AsyncSession, position: int, limit: int) -> Sequence[AuditRow]:
            query = select(AuditRow).where(AuditRow.partner_id == partner_id, AuditRow.id > position)
            return (await session.scalars(query.order_by(AuditRow.id).limit(limit))).all()

        async def accept(child: Context, row: AuditRow) -> bool:
            if actor.account_id is None and uid_set is None:
                return True
            account = await child.accounts.load(row.account_id)  # None outside the viewer's scope
            if account is None:
                return False
            return uid_set is None or account.uid in uid_set

        return stream.follow(
            info.context,
            key=f"audit:{partner_id}",
            topic=AUDIT_TOPIC.format(partner_id=partner_id),
            model=AuditRow,
            after_id=start,
            fetch=fetch,
            feed_fetch=feed_fetch,
            accept=accept,
            convert=AuditEntry.of,
        )

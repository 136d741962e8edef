"""The root types, composed from one class per domain, and node/viewer/audit queries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry

from models.enums import AuditAction
from resolvers import accounts as account_ops
from resolvers import audit as audit_ops
from schema.accounts import ARG_AFTER, ARG_FIRST, AccountMutations, AccountQueries
from schema.alerts import AlertMutations, AlertQueries, AlertSubscriptions
from schema.audit import AuditEntryConnection
from schema.common import Node, PageInfo, from_global_id
from schema.context import Info
from schema.exports import ExportMutations, ExportQueries, ExportSubscriptions
from schema.live import LiveSubscriptions
from schema.partners import Operator, Partner, Viewer
from schema.policy import PolicyMutations, PolicyQueries
from schema.quota import QuotaMutations
from schema.registry import resolve_registered_node
from schema.webhooks import WebhookMutations, WebhookQueries


async def resolve_node(info: Info, global_id: str) -> Node | None:
    """Any visible object by global id; another partner's objects are null, as if they did not exist.

    Every Node type registers its own resolver with `schema.registry.register_node`, next to its
    type, and applies the viewer's scope there.
    """
    parsed = from_global_id(global_id)
    if parsed is None:
        return None
    type_name, pk = parsed
    info.context.require_actor()
    return await resolve_registered_node(info, type_name, pk)


@strawberry.type(description="Read operations.")
class Query(AccountQueries, PolicyQueries, AlertQueries, ExportQueries, WebhookQueries):
    @strawberry.field(description="Any object by its global id; null when it does not exist or is not yours.")
    async def node(
        self, info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="A global id.")]
    ) -> Node | None:
        return await resolve_node(info, id)

    @strawberry.field(description="Who is calling: operator, partner and method.")
    async def viewer(self, info: Info) -> Viewer:
        actor = info.context.require_actor()
        partner = await info.context.loaders.partner.load(actor.partner_id)
        return Viewer(operator=Operator.of_actor(actor), partner=Partner.of(partner), method=actor.method)

    @strawberry.field(description="Audit entries of your accounts, newest first.")
    async def audit_entries(
        self,
        info: Info,
        first: Annotated[int | None, ARG_FIRST] = 20,
        after: Annotated[str | None, ARG_AFTER] = None,
        uid: Annotated[str | None, strawberry.argument(description="Only this account's entries.")] = None,
        actions: Annotated[list[AuditAction] | None, strawberry.argument(description="Only these actions.")] = None,
        since: Annotated[datetime | None, strawberry.argument(description="From (inclusive).")] = None,
        until: Annotated[datetime | None, strawberry.argument(description="Until (exclusive).")] = None,
    ) -> AuditEntryConnection:
        actor = info.context.require_actor()
        session = await info.context.session()
        account_id: int | None = None
        if uid is not None:
            account = await account_ops.find(session, actor, uid)
            if account is None:
                return AuditEntryConnection(edges=[], page_info=PageInfo.empty(), total_count=0)
            account_id = account.id
        page = await audit_ops.list_entries(
            session, actor, first=first, after=after, account_id=account_id, actions=actions, since=since, until=until
        )
        return await AuditEntryConnection.of(page)


@strawberry.type(description="Changes. Business-rule failures come back as userErrors and change nothing.")
class Mutation(AccountMutations, QuotaMutations, PolicyMutations, AlertMutations, ExportMutations, WebhookMutations):
    pass


@strawberry.type(description="Live updates over graphql-transport-ws.")
class Subscription(AlertSubscriptions, ExportSubscriptions, LiveSubscriptions):
    pass


__all__ = ["Mutation", "Query", "Subscription"]

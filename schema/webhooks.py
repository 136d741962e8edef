"""Webhook endpoints, their deliveries and attempts (ADMIN only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import strawberry

from models.enums import ErrorCode, WebhookDeliveryStatus, WebhookEventKind
from models.tables import WebhookAttempt as AttemptRow
from models.tables import WebhookDelivery as DeliveryRow
from models.tables import WebhookEndpoint as EndpointRow
from resolvers import webhooks as ops
from resolvers.actor import Permission
from resolvers.errors import UserErrors
from resolvers.pagination import Page
from schema.accounts import ARG_AFTER, ARG_FIRST
from schema.common import INPUT_ARG, Node, PageInfo, UserError, from_global_id, mutate, to_global_id
from schema.context import Info
from schema.registry import register_node

ENDPOINT = "WebhookEndpoint"
DELIVERY = "WebhookDelivery"

# ---------------------------------------------------------------- types


@strawberry.type(description="Where the partner's systems receive events as signed HTTP POSTs.")
class WebhookEndpoint(Node):
    _row: strawberry.Private[EndpointRow]

    @classmethod
    def of(cls, row: EndpointRow) -> WebhookEndpoint:
        return cls(id=to_global_id(ENDPOINT, row.id), _row=row)

    @strawberry.field(description="The https URL events are POSTed to.")
    def url(self) -> str:
        return self._row.url

    @strawberry.field(description="What the endpoint is for, for people.")
    def description(self) -> str | None:
        return self._row.description

    @strawberry.field(description="The kinds of events sent to it.")
    def event_kinds(self) -> list[WebhookEventKind]:
        return [WebhookEventKind(k) for k in self._row.event_kinds or []]

    @strawberry.field(description="Whether events are sent; a disabled endpoint gets nothing.")
    def enabled(self) -> bool:
        return self._row.enabled

    @strawberry.field(description="Why it is disabled (by an operator, or automatically after failing too long).")
    def disabled_reason(self) -> str | None:
        return None if self._row.enabled else self._row.disabled_reason

    @strawberry.field(description="Since when every attempt has failed; null while deliveries succeed.")
    def failing_since(self) -> datetime | None:
        return self._row.failing_since

    @strawberry.field(
        description="Until when the previous secret also signs (24 hours after a rotation); null without one."
    )
    def previous_secret_expires_at(self) -> datetime | None:
        return self._row.previous_secret_expires_at if self._row.previous_secret else None

    @strawberry.field(description="When it was created; it receives events that happened from then on.")
    def created_at(self) -> datetime:
        return self._row.created_at


@strawberry.type(description="One POST of a delivery to its endpoint.")
class WebhookAttempt:
    attempted_at: datetime = strawberry.field(description="When the POST started.")
    status_code: int | None = strawberry.field(description="The receiver's HTTP status; null when none came.")
    duration_ms: int = strawberry.field(description="How long the attempt took, in milliseconds.")
    error: str | None = strawberry.field(description="Why it failed (status, timeout, refused address); null on 2xx.")
    next_attempt_at: datetime | None = strawberry.field(
        description="When the next attempt was scheduled after this one; null when none was."
    )

    @classmethod
    def of(cls, row: AttemptRow) -> WebhookAttempt:
        return cls(
            attempted_at=row.attempted_at,
            status_code=row.status_code,
            duration_ms=row.duration_ms,
            error=row.error,
            next_attempt_at=row.next_attempt_at,
        )


@strawberry.type(description="One event for one endpoint, sent until the receiver answers 2xx or it is given up.")
class WebhookDelivery(Node):
    _row: strawberry.Private[DeliveryRow]
    _attempts: strawberry.Private[list[AttemptRow] | None] = None

    @classmethod
    def of(cls, row: DeliveryRow, attempts: list[AttemptRow] | None = None) -> WebhookDelivery:
        return cls(id=to_global_id(DELIVERY, row.id), _row=row, _attempts=attempts)

    @strawberry.field(description="The event's stable id (also the Uidhub-Event-Id header): deduplicate on it.")
    def event_id(self) -> str:
        return self._row.event_id

    @strawberry.field(description="The event's kind.")
    def event_kind(self) -> WebhookEventKind:
        return WebhookEventKind(self._row.event_kind)

    @strawberry.field(description="Where the delivery stands.")
    def status(self) -> WebhookDeliveryStatus:
        return self._row.status

    @strawberry.field(description="The exact JSON body that is signed and sent.")
    def body(self) -> str:
        return self._row.body

    @strawberry.field(description="How many POSTs were tried.")
    def attempt_count(self) -> int:
        return self._row.attempts

    @strawberry.field(description="The HTTP status of the last attempt; null when none came.")
    def last_status_code(self) -> int | None:
        return self._row.last_status_code

    @strawberry.field(description="Why the last attempt failed; null after a success.")
    def last_error(self) -> str | None:
        return self._row.last_error

    @strawberry.field(description="When the next attempt is due; null once the delivery succeeded or failed.")
    def next_attempt_at(self) -> datetime | None:
        return self._row.next_attempt_at if self._row.status is WebhookDeliveryStatus.PENDING else None

    @strawberry.field(description="When the delivery was queued.")
    def created_at(self) -> datetime:
        return self._row.created_at

    @strawberry.field(description="When it succeeded or was given up.")
    def finished_at(self) -> datetime | None:
        return self._row.finished_at

    @strawberry.field(description="Every attempt, oldest first.")
    async def attempts(self, info: Info) -> list[WebhookAttempt]:
        rows = self._attempts
        if rows is None:  # a single delivery (node, mutation payload): one query
            session = await info.context.session()
            rows = (await ops.attempts_of(session, [self._row.id]))[self._row.id]
        return [WebhookAttempt.of(r) for r in rows]


@strawberry.type(description="An edge of a WebhookDeliveryConnection.")
class WebhookDeliveryEdge:
    cursor: str = strawberry.field(description="Pass as `after` to continue after this delivery.")
    node: WebhookDelivery = strawberry.field(description="The delivery.")


@strawberry.type(description="Deliveries of one endpoint, newest first.")
class WebhookDeliveryConnection:
    edges: list[WebhookDeliveryEdge] = strawberry.field(description="This page's deliveries.")
    page_info: PageInfo = strawberry.field(description="Paging state.")
    _page: strawberry.Private[Page[DeliveryRow] | None]

    @strawberry.field(description="Deliveries matching the arguments, over all pages.")
    async def total_count(self) -> int:
        return await self._page.count() if self._page is not None else 0


# ---------------------------------------------------------------- inputs and payloads


@strawberry.input(description="A new webhook endpoint.")
class CreateWebhookEndpointInput:
    url: str = strawberry.field(
        description="An https URL (http only to loopback, and only when the server allows it). Private, "
        "loopback and link-local addresses are refused unless the server allows them."
    )
    event_kinds: list[WebhookEventKind] = strawberry.field(description="The kinds of events to send (at least one).")
    description: str | None = strawberry.field(default=None, description="What it is for; at most 500 characters.")
    enabled: bool = strawberry.field(default=True, description="Whether to send events at once.")


@strawberry.input(description="Change an endpoint; omitted fields stay as they are.")
class UpdateWebhookEndpointInput:
    id: strawberry.ID = strawberry.field(description="The endpoint's global id.")
    url: str | None = strawberry.field(default=strawberry.UNSET, description="A new URL (same rules as creation).")
    event_kinds: list[WebhookEventKind] | None = strawberry.field(
        default=strawberry.UNSET, description="The new set of event kinds."
    )
    description: str | None = strawberry.field(
        default=strawberry.UNSET, description="A new description; null clears it."
    )
    enabled: bool | None = strawberry.field(
        default=strawberry.UNSET,
        description="Enable (clears the failure state; pending deliveries resume in order) or disable.",
    )


@strawberry.input(description="Identifies one webhook endpoint.")
class WebhookEndpointIdInput:
    id: strawberry.ID = strawberry.field(description="The endpoint's global id.")


@strawberry.input(description="Identifies one webhook delivery.")
class RedeliverWebhookInput:
    delivery_id: strawberry.ID = strawberry.field(description="The delivery's global id.")


@strawberry.input(description="Send a TEST event to one endpoint.")
class SendTestWebhookInput:
    endpoint_id: strawberry.ID = strawberry.field(description="The endpoint's global id.")


@strawberry.type(description="Result of a change to a webhook endpoint.")
class WebhookEndpointPayload:
    endpoint: WebhookEndpoint | None = strawberry.field(description="The endpoint after the change; null on errors.")
    secret: str | None = strawberry.field(
        description="The signing secret, shown only here: on creation and on rotation. Store it now."
    )
    user_errors: list[UserError] = strawberry.field(description="Why nothing changed; empty on success.")


@strawberry.type(description="Result of deleting a webhook endpoint.")
class DeleteWebhookEndpointPayload:
    deleted_id: strawberry.ID | None = strawberry.field(description="The deleted endpoint's id; null on errors.")
    user_errors: list[UserError] = strawberry.field(description="Why nothing changed; empty on success.")


@strawberry.type(description="Result of queueing a webhook delivery.")
class WebhookDeliveryPayload:
    delivery: WebhookDelivery | None = strawberry.field(description="The queued delivery; null on errors.")
    user_errors: list[UserError] = strawberry.field(description="Why nothing changed; empty on success.")


def _pk(global_id: str, type_name: str, *field: str) -> int:
    parsed = from_global_id(global_id)
    if parsed is None or parsed[0] != type_name:
        raise UserErrors.one(ErrorCode.NOT_FOUND, f"No {type_name} with this id.", *field)
    return parsed[1]


def _endpoint_errors(errors: list[UserError]) -> WebhookEndpointPayload:
    return WebhookEndpointPayload(endpoint=None, secret=None, user_errors=errors)


def _delivery_errors(errors: list[UserError]) -> WebhookDeliveryPayload:
    return WebhookDeliveryPayload(delivery=None, user_errors=errors)


# ---------------------------------------------------------------- root fields


@strawberry.type
class WebhookQueries:
    @strawberry.field(description="The partner's webhook endpoints (ADMIN only).")
    async def webhook_endpoints(self, info: Info) -> list[WebhookEndpoint]:
        actor = info.context.require_actor()
        session = await info.context.session()
        return [WebhookEndpoint.of(r) for r in await ops.list_endpoints(session, actor)]

    @strawberry.field(description="One endpoint's deliveries with every attempt, newest first (ADMIN only).")
    async def webhook_deliveries(
        self,
        info: Info,
        endpoint_id: Annotated[strawberry.ID, strawberry.argument(description="The endpoint's global id.")],
        first: Annotated[int | None, ARG_FIRST] = 20,
        after: Annotated[str | None, ARG_AFTER] = None,
        status: Annotated[
            WebhookDeliveryStatus | None, strawberry.argument(description="Only deliveries in this state.")
        ] = None,
    ) -> WebhookDeliveryConnection:
        actor = info.context.require_actor()
        session = await info.context.session()
        parsed = from_global_id(endpoint_id)
        page = None
        if parsed is not None and parsed[0] == ENDPOINT:
            page = await ops.list_deliveries(session, actor, parsed[1], first=first, after=after, status=status)
        else:  # a malformed id lists nothing, but only for those who may list at all
            actor.require(Permission.WEBHOOKS)
        if page is None:
            return WebhookDeliveryConnection(edges=[], page_info=PageInfo.empty(), _page=None)
        attempts = await ops.attempts_of(session, [r.id for r in page.items])
        return WebhookDeliveryConnection(
            edges=[
                WebhookDeliveryEdge(cursor=c, node=WebhookDelivery.of(r, attempts.get(r.id, [])))
                for r, c in zip(page.items, page.cursors, strict=True)
            ],
            page_info=PageInfo.of(page),
            _page=page,
        )


@strawberry.type
class WebhookMutations:
    @strawberry.mutation(description="Create a webhook endpoint (ADMIN only); the payload shows its secret once.")
    async def create_webhook_endpoint(
        self, info: Info, input: Annotated[CreateWebhookEndpointInput, INPUT_ARG]
    ) -> WebhookEndpointPayload:
        async def op(session: Any, actor: Any) -> WebhookEndpointPayload:
            created = await ops.create_endpoint(
                session,
                actor,
                info.context.settings,
                url=input.url,
                description=input.description,
                event_kinds=input.event_kinds,
                enabled=input.enabled,
            )
            return WebhookEndpointPayload(
                endpoint=WebhookEndpoint.of(created.endpoint), secret=created.secret, user_errors=[]
            )

        return await mutate(info, op, _endpoint_errors)

    @strawberry.mutation(description="Change a webhook endpoint (ADMIN only).")
    async def update_webhook_endpoint(
        self, info: Info, input: Annotated[UpdateWebhookEndpointInput, INPUT_ARG]
    ) -> WebhookEndpointPayload:
        def given(value: Any) -> Any:
            return None if value is strawberry.UNSET else value

        async def op(session: Any, actor: Any) -> WebhookEndpointPayload:
            row = await ops.update_endpoint(
                session,
                actor,
                info.context.settings,
                _pk(input.id, ENDPOINT, "input", "id"),
                url=given(input.url),
                description=given(input.description),
                clear_description=input.description is None,
                event_kinds=given(input.event_kinds),
                enabled=given(input.enabled),
            )
            return WebhookEndpointPayload(endpoint=WebhookEndpoint.of(row), secret=None, user_errors=[])

        return await mutate(info, op, _endpoint_errors)

    @strawberry.mutation(description="Delete a webhook endpoint with its delivery log (ADMIN only).")
    async def delete_webhook_endpoint(
        self, info: Info, input: Annotated[WebhookEndpointIdInput, INPUT_ARG]
    ) -> DeleteWebhookEndpointPayload:
        async def op(session: Any, actor: Any) -> DeleteWebhookEndpointPayload:
            await ops.delete_endpoint(session, actor, _pk(input.id, ENDPOINT, "input", "id"))
            return DeleteWebhookEndpointPayload(deleted_id=input.id, user_errors=[])

        return await mutate(info, op, lambda errors: DeleteWebhookEndpointPayload(deleted_id=None, user_errors=errors))

    @strawberry.mutation(
        description="Give an endpoint a new secret (ADMIN only), shown once; the old one also signs for 24 hours."
    )
    async def rotate_webhook_secret(
        self, info: Info, input: Annotated[WebhookEndpointIdInput, INPUT_ARG]
    ) -> WebhookEndpointPayload:
        async def op(session: Any, actor: Any) -> WebhookEndpointPayload:
            created = await ops.rotate_secret(session, actor, _pk(input.id, ENDPOINT, "input", "id"))
            return WebhookEndpointPayload(
                endpoint=WebhookEndpoint.of(created.endpoint), secret=created.secret, user_errors=[]
            )

        return await mutate(info, op, _endpoint_errors)

    @strawberry.mutation(description="Send a delivery again with the same event id and body (ADMIN only).")
    async def redeliver_webhook(
        self, info: Info, input: Annotated[RedeliverWebhookInput, INPUT_ARG]
    ) -> WebhookDeliveryPayload:
        async def op(session: Any, actor: Any) -> WebhookDeliveryPayload:
            row = await ops.redeliver(session, actor, _pk(input.delivery_id, DELIVERY, "input", "deliveryId"))
            return WebhookDeliveryPayload(delivery=WebhookDelivery.of(row), user_errors=[])

        return await mutate(info, op, _delivery_errors)

    @strawberry.mutation(description="Queue a TEST event for an endpoint (ADMIN only).")
    async def send_test_webhook(
        self, info: Info, input: Annotated[SendTestWebhookInput, INPUT_ARG]
    ) -> WebhookDeliveryPayload:
        async def op(session: Any, actor: Any) -> WebhookDeliveryPayload:
            row = await ops.send_test(session, actor, _pk(input.endpoint_id, ENDPOINT, "input", "endpointId"))
            return WebhookDeliveryPayload(delivery=WebhookDelivery.of(row, []), user_errors=[])

        return await mutate(info, op, _delivery_errors)


# ---------------------------------------------------------------- node(id:)


async def _resolve_endpoint(info: Any, pk: int) -> WebhookEndpoint | None:
    actor = info.context.require_actor()
    if not actor.can(Permission.WEBHOOKS):
        return None
    session = await info.context.session()
    row = await session.get(EndpointRow, pk)
    return WebhookEndpoint.of(row) if row is not None and row.partner_id == actor.partner_id else None


async def _resolve_delivery(info: Any, pk: int) -> WebhookDelivery | None:
    actor = info.context.require_actor()
    if not actor.can(Permission.WEBHOOKS):
        return None
    session = await info.context.session()
    row = await session.get(DeliveryRow, pk)
    return WebhookDelivery.of(row) if row is not None and row.partner_id == actor.partner_id else None


register_node(ENDPOINT, _resolve_endpoint)
register_node(DELIVERY, _resolve_delivery)

__all__ = ["WebhookMutations", "WebhookQueries"]

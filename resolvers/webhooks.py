"""Webhook endpoints and their delivery log: the operations (ADMIN only).

The delivery machinery (dispatcher, sender, signatures, URL checks) lives in
notifications.webhooks; these functions validate input, enforce the role and
the partner's scope, and change rows in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Partner
from uidhub.models.enums import ErrorCode, WebhookDeliveryStatus, WebhookEventKind
from uidhub.models.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from uidhub.notifications import log as event_log
from uidhub.notifications import webhooks as machinery
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.errors import UserErrors, invalid
from uidhub.resolvers.pagination import Page, check_list, newest_first
from uidhub.settings import Settings

MAX_ENDPOINTS = 20
DESCRIPTION_MAX = 500
DELIVERY_CURSOR = "webhook-delivery"


@dataclass(frozen=True)
class CreatedEndpoint:
    """An endpoint with its secret: the only moment the secret is shown."""

    endpoint: WebhookEndpoint
    secret: str


def _check_url(url: str, settings: Settings) -> str:
    try:
        return machinery.check_url(
            url,
            allow_http_loopback=settings.webhook_allow_http_loopback,
            allow_private=settings.webhook_allow_private,
        )
    except machinery.UnsafeUrl as exc:
        raise invalid(str(exc), "input", "url") from None


def _check_kinds(kinds: Sequence[WebhookEventKind]) -> list[str]:
    check_list(kinds, "eventKinds")
    chosen = [k.value for k in WebhookEventKind if k in set(kinds) and k is not WebhookEventKind.TEST]
    if not chosen:
        raise invalid("Choose at least one event kind.", "input", "eventKinds")
    return chosen


def _check_description(description: str | None) -> str | None:
    if description is None:
        return None
    if len(description) > DESCRIPTION_MAX or any(ord(ch) < 0x20 and ch not in "\n\t" for ch in description):
        raise invalid(
            f"The description is at most {DESCRIPTION_MAX} characters without control characters.",
            "input",
            "description",
        )
    return description


async def list_endpoints(session: AsyncSession, actor: Actor) -> list[WebhookEndpoint]:
    actor.require(Permission.WEBHOOKS)
    rows = await session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.partner_id == actor.partner_id).order_by(WebhookEndpoint.id)
    )
    return list(rows.all())


async def find_endpoint(session: AsyncSession, actor: Actor, endpoint_id: int, *field: str) -> WebhookEndpoint:
    """The actor's endpoint, or NOT_FOUND (another partner's endpoint does not exist for this actor)."""
    actor.require(Permission.WEBHOOKS)
    row = await session.scalar(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.partner_id == actor.partner_id)
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise UserErrors.one(ErrorCode.NOT_FOUND, "No webhook endpoint with this id.", *field)
    return row


async def create_endpoint(
    session: AsyncSession,
    actor: Actor,
    settings: Settings,
    *,
    url: str,
    description: str | None,
    event_kinds: Sequence[WebhookEventKind],
    enabled: bool,
) -> CreatedEndpoint:
    actor.require(Permission.WEBHOOKS)
    clean_url = _check_url(url, settings)
    kinds = _check_kinds(event_kinds)
    text = _check_description(description)
    count = await session.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.partner_id == actor.partner_id)
    )
    if (count or 0) >= MAX_ENDPOINTS:
        raise invalid(f"A partner has at most {MAX_ENDPOINTS} webhook endpoints.", "input")
    if enabled:
        await machinery.skip_unwatched_history(session)
    secret = machinery.new_secret()
    row = WebhookEndpoint(
        partner_id=actor.partner_id,
        url=clean_url,
        description=text,
        event_kinds=kinds,
        enabled=enabled,
        secret=secret,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    await session.flush()
    return CreatedEndpoint(endpoint=row, secret=secret)


async def update_endpoint(
    session: AsyncSession,
    actor: Actor,
    settings: Settings,
    endpoint_id: int,
    *,
    url: str | None = None,
    description: str | None = None,
    clear_description: bool = False,
    event_kinds: Sequence[WebhookEventKind] | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Change what is given; enabling an endpoint clears its failure state so pending deliveries resume."""
    row = await find_endpoint(session, actor, endpoint_id, "input", "id")
    if url is not None:
        row.url = _check_url(url, settings)
    if event_kinds is not None:
        row.event_kinds = _check_kinds(event_kinds)
    if clear_description:
        row.description = None
    elif description is not None:
        row.description = _check_description(description)
    if enabled is not None and enabled != row.enabled:
        if enabled:
            await machinery.skip_unwatched_history(session)
            row.failing_since = None
            row.disabled_reason = None
            # Deliveries left pending while it was off go out now, still in order.
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == row.id, WebhookDelivery.status == WebhookDeliveryStatus.PENDING)
                .values(next_attempt_at=datetime.now(UTC), first_failed_at=None)
                .execution_options(synchronize_session=False)
            )
            event_log.add_topic(session, machinery.TOPIC)
        else:
            row.disabled_reason = "Disabled by an operator."
        row.enabled = enabled
    await session.flush()
    return row


async def delete_endpoint(session: AsyncSession, actor: Actor, endpoint_id: int) -> int:
    """Remove the endpoint with its deliveries and their attempts; return its id."""
    row = await find_endpoint(session, actor, endpoint_id, "input", "id")
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == row.id)
    await session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == row.id))
    await session.delete(row)
    await session.flush()
    return endpoint_id


async def rotate_secret(session: AsyncSession, actor: Actor, endpoint_id: int) -> CreatedEndpoint:
    """A new secret; the old one keeps signing for 24 hours so receivers can switch without a gap."""
    row = await find_endpoint(session, actor, endpoint_id, "input", "id")
    secret = machinery.new_secret()
    row.previous_secret = row.secret
    row.previous_secret_expires_at = datetime.now(UTC) + machinery.ROTATION_OVERLAP
    row.secret = secret
    await session.flush()
    return CreatedEndpoint(endpoint=row, secret=secret)


async def find_delivery(session: AsyncSession, actor: Actor, delivery_id: int, *field: str) -> WebhookDelivery:
    actor.require(Permission.WEBHOOKS)
    row = await session.scalar(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.partner_id == actor.partner_id)
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise UserErrors.one(ErrorCode.NOT_FOUND, "No webhook delivery with this id.", *field)
    return row


async def redeliver(session: AsyncSession, actor: Actor, delivery_id: int) -> WebhookDelivery:
    """Send a delivery again (whatever its state): same event id and body, a fresh retry window."""
    row = await find_delivery(session, actor, delivery_id, "input", "deliveryId")
    row.status = WebhookDeliveryStatus.PENDING
    row.next_attempt_at = datetime.now(UTC)
    row.first_failed_at = None
    row.finished_at = None
    event_log.add_topic(session, machinery.TOPIC)
    await session.flush()
    return row


async def send_test(session: AsyncSession, actor: Actor, endpoint_id: int) -> WebhookDelivery:
    """Queue a TEST event for one endpoint (sent even if it did not subscribe to TEST)."""
    row = await find_endpoint(session, actor, endpoint_id, "input", "endpointId")
    if not row.enabled:
        raise invalid("The endpoint is disabled; enable it first.", "input", "endpointId")
    partner_uid = await session.scalar(select(Partner.uid).where(Partner.id == actor.partner_id)) or ""
    payload = machinery.test_payload(row, partner_uid)
    delivery = WebhookDelivery(**machinery.delivery_values(row, payload))
    session.add(delivery)
    event_log.add_topic(session, machinery.TOPIC)
    await session.flush()
    return delivery


async def list_deliveries(
    session: AsyncSession,
    actor: Actor,
    endpoint_id: int,
    *,
    first: int | None,
    after: str | None,
    status: WebhookDeliveryStatus | None = None,
) -> Page[WebhookDelivery] | None:
    """One endpoint's deliveries, newest first; None when the endpoint is not the actor's."""
    actor.require(Permission.WEBHOOKS)
    owned = await session.scalar(
        select(WebhookEndpoint.id).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.partner_id == actor.partner_id
        )
    )
    if owned is None:
        return None
    conditions = [WebhookDelivery.endpoint_id == endpoint_id]
    if status is not None:
        conditions.append(WebhookDelivery.status == status)
    return await newest_first(
        session, WebhookDelivery, conditions, first=first, after=after, cursor_kind=DELIVERY_CURSOR
    )


async def attempts_of(session: AsyncSession, delivery_ids: Sequence[int]) -> dict[int, list[WebhookAttempt]]:
    """The attempts of many deliveries in one query (a page of deliveries costs one more statement)."""
    result: dict[int, list[WebhookAttempt]] = {i: [] for i in delivery_ids}
    if not delivery_ids:
        return result
    rows = await session.scalars(
        select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(delivery_ids))).order_by(WebhookAttempt.id)
    )
    for row in rows.all():
        result.setdefault(row.delivery_id, []).append(row)
    return result

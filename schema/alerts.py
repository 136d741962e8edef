"""Alert events, email notifications, credit alerts and alert recipients.

The live subscriptions (`quotaThresholdBreached`, `accountEvents`) are defined
by the live module; `AlertSubscriptions` stays a plain placeholder here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import strawberry
from sqlalchemy import select

from models import Account, AlertEvent
from models import EmailNotification as EmailRow
from models.enums import AlertKind, AlertState, NotificationStatus
from resolvers import accounts as account_ops
from resolvers import alerts as ops
from resolvers.pagination import Page
from schema.accounts import ARG_AFTER, ARG_FIRST, EndUser, EndUserPayload, end_user_errors, required_end_user
from schema.common import INPUT_ARG, Node, PageInfo, UserError, mutate, to_global_id
from schema.context import Info
from schema.partners import Partner
from schema.registry import register_node
from schema.scalars import Money

# ---------------------------------------------------------------- types


@strawberry.type(description="One crossing of a threshold. Ids increase in the order events happened.")
class QuotaAlertEvent(Node):
    _row: strawberry.Private[AlertEvent]

    @classmethod
    def of(cls, row: AlertEvent) -> QuotaAlertEvent:
        return cls(id=to_global_id("QuotaAlertEvent", row.id), _row=row)

    @strawberry.field(description="Which threshold was crossed.")
    def kind(self) -> AlertKind:
        return self._row.kind

    @strawberry.field(description="Which way it was crossed.")
    def state(self) -> AlertState:
        return self._row.state

    @strawberry.field(
        description="QUOTA_WARNING: the pool owner (master or standalone account); CREDIT_ALERT: the account "
        "whose own alert it is."
    )
    async def account(self, info: Info) -> EndUser:
        return await required_end_user(info, self._row.account_id)

    @strawberry.field(description="The pool's available quota right after the change that crossed the threshold.")
    def available(self) -> Money:
        return Money(self._row.available_cents)

    @strawberry.field(description="The threshold crossed: the warning level, or the credit alert's amount.")
    def threshold(self) -> Money:
        return Money(self._row.threshold_cents)

    @strawberry.field(description="When the crossing happened.")
    def occurred_at(self) -> datetime:
        return self._row.occurred_at


@strawberry.type(description="An edge of a QuotaAlertEventConnection.")
class QuotaAlertEventEdge:
    cursor: str = strawberry.field(description="Pass as `after` to continue after this event.")
    node: QuotaAlertEvent = strawberry.field(description="The event.")


@strawberry.type(description="Alert events, newest first.")
class QuotaAlertEventConnection:
    edges: list[QuotaAlertEventEdge] = strawberry.field(description="This page's events.")
    page_info: PageInfo = strawberry.field(description="Paging state.")
    _page: strawberry.Private[Page[AlertEvent] | None]

    @strawberry.field(description="Events matching the arguments, over all pages.")
    async def total_count(self) -> int:
        return await self._page.count() if self._page is not None else 0

    @classmethod
    def of(cls, page: Page[AlertEvent]) -> QuotaAlertEventConnection:
        return cls(
            edges=[
                QuotaAlertEventEdge(cursor=c, node=QuotaAlertEvent.of(r))
                for r, c in zip(page.items, page.cursors, strict=True)
            ],
            page_info=PageInfo.of(page),
            _page=page,
        )

    @classmethod
    def empty(cls) -> QuotaAlertEventConnection:
        return cls(edges=[], page_info=PageInfo.empty(), _page=None)


@strawberry.type(description="One email in the outbox.")
class EmailNotification(Node):
    _row: strawberry.Private[EmailRow]
    _event: strawberry.Private[AlertEvent | None]

    @classmethod
    def of(cls, row: EmailRow, event: AlertEvent | None) -> EmailNotification:
        return cls(id=to_global_id("EmailNotification", row.id), _row=row, _event=event)

    @strawberry.field(description="The recipients.")
    def to(self) -> list[str]:
        return list(self._row.recipients or [])

    @strawberry.field(description="The subject line.")
    def subject(self) -> str:
        return self._row.subject

    @strawberry.field(description="Delivery state.")
    def status(self) -> NotificationStatus:
        return self._row.status

    @strawberry.field(description="Send attempts so far.")
    def attempts(self) -> int:
        return self._row.attempts

    @strawberry.field(description="The error of the last failed attempt.")
    def last_error(self) -> str | None:
        return self._row.last_error

    @strawberry.field(description="When the email was queued (with its event, in the same transaction).")
    def created_at(self) -> datetime:
        return self._row.created_at

    @strawberry.field(description="When the SMTP server accepted it.")
    def sent_at(self) -> datetime | None:
        return self._row.sent_at

    @strawberry.field(description="The BREACHED event this email is about.")
    def alert_event(self) -> QuotaAlertEvent | None:
        return QuotaAlertEvent.of(self._event) if self._event is not None else None


@strawberry.type(description="An edge of an EmailNotificationConnection.")
class EmailNotificationEdge:
    cursor: str = strawberry.field(description="Pass as `after` to continue after this email.")
    node: EmailNotification = strawberry.field(description="The email.")


@strawberry.type(description="Outbox emails, newest first.")
class EmailNotificationConnection:
    edges: list[EmailNotificationEdge] = strawberry.field(description="This page's emails.")
    page_info: PageInfo = strawberry.field(description="Paging state.")
    _page: strawberry.Private[Page[EmailRow]]

    @strawberry.field(description="Emails matching the arguments, over all pages.")
    async def total_count(self) -> int:
        return await self._page.count()


async def _events_by_id(info: Info, ids: set[int]) -> dict[int, AlertEvent]:
    """The events of a page of emails in one query (no per-row lookups)."""
    if not ids:
        return {}
    session = await info.context.session()
    rows = (await session.scalars(select(AlertEvent).where(AlertEvent.id.in_(sorted(ids))))).all()
    return {row.id: row for row in rows}


# ---------------------------------------------------------------- inputs and payloads


@strawberry.input(description="Create or change an end user's own available credit alert.")
class SetCreditAlertInput:
    uid: str = strawberry.field(description="The account (an END_USER token: its own account or a sub-account).")
    enabled: bool = strawberry.field(description="Whether the alert is on; a disabled alert stores no events.")
    threshold: Money = strawberry.field(
        description="Alert when the pool's available falls below this amount (not negative). Set above the "
        "current available, the alert is BREACHED at once."
    )
    email: str = strawberry.field(description="Where the alert email goes.")


@strawberry.input(description="Replace the partner's quota warning recipients.")
class SetAlertEmailsInput:
    emails: list[str] = strawberry.field(
        description="At most 100 addresses; duplicates (case-insensitive) are dropped. An empty list stops "
        "quota warning emails (events are still stored)."
    )


@strawberry.type(description="Result of a change to the viewer's partner.")
class PartnerPayload:
    partner: Partner | None = strawberry.field(description="The partner after the change; null on errors.")
    user_errors: list[UserError] = strawberry.field(description="Why nothing changed; empty on success.")


def partner_errors(errors: list[UserError]) -> PartnerPayload:
    return PartnerPayload(partner=None, user_errors=errors)


# ---------------------------------------------------------------- root fields


@strawberry.type
class AlertQueries:
    @strawberry.field(description="Threshold crossings of your accounts, newest first.")
    async def alert_events(
        self,
        info: Info,
        first: Annotated[int | None, ARG_FIRST] = 20,
        after: Annotated[str | None, ARG_AFTER] = None,
        uid: Annotated[str | None, strawberry.argument(description="Only this account's events.")] = None,
        kinds: Annotated[list[AlertKind] | None, strawberry.argument(description="Only these kinds.")] = None,
        states: Annotated[list[AlertState] | None, strawberry.argument(description="Only these states.")] = None,
    ) -> QuotaAlertEventConnection:
        actor = info.context.require_actor()
        session = await info.context.session()
        account_id: int | None = None
        if uid is not None:
            account = await account_ops.find(session, actor, uid)
            if account is None:
                return QuotaAlertEventConnection.empty()
            account_id = account.id
        page = await ops.list_events(
            session, actor, first=first, after=after, account_id=account_id, kinds=kinds, states=states
        )
        return QuotaAlertEventConnection.of(page)

    @strawberry.field(description="Alert emails of the outbox, newest first.")
    async def notifications(
        self,
        info: Info,
        first: Annotated[int | None, ARG_FIRST] = 20,
        after: Annotated[str | None, ARG_AFTER] = None,
        status: Annotated[NotificationStatus | None, strawberry.argument(description="Only this status.")] = None,
    ) -> EmailNotificationConnection:
        actor = info.context.require_actor()
        session = await info.context.session()
        page = await ops.list_notifications(session, actor, first=first, after=after, status=status)
        events = await _events_by_id(info, {r.alert_event_id for r in page.items if r.alert_event_id is not None})
        return EmailNotificationConnection(
            edges=[
                EmailNotificationEdge(
                    cursor=c,
                    node=EmailNotification.of(r, events.get(r.alert_event_id) if r.alert_event_id else None),
                )
                for r, c in zip(page.items, page.cursors, strict=True)
            ],
            page_info=PageInfo.of(page),
            _page=page,
        )


@strawberry.type
class AlertMutations:
    @strawberry.mutation(
        description="Set an end user's own available credit alert (END_USER tokens on their own account, "
        "OPERATOR and ADMIN on any of theirs). Evaluated at once against the pool's available."
    )
    async def set_credit_alert(self, info: Info, input: Annotated[SetCreditAlertInput, INPUT_ARG]) -> EndUserPayload:
        async def op(session, actor) -> EndUserPayload:  # type: ignore[no-untyped-def]
            row = await ops.set_credit_alert(
                session, actor, uid=input.uid, enabled=input.enabled, threshold_cents=input.threshold,
                email=input.email,
            )
            return EndUserPayload(end_user=EndUser.of(row), user_errors=[])

        return await mutate(info, op, end_user_errors)

    @strawberry.mutation(description="Replace where quota warning emails go (ADMIN only).")
    async def set_alert_emails(self, info: Info, input: Annotated[SetAlertEmailsInput, INPUT_ARG]) -> PartnerPayload:
        async def op(session, actor) -> PartnerPayload:  # type: ignore[no-untyped-def]
            row = await ops.set_alert_emails(session, actor, input.emails)
            return PartnerPayload(partner=Partner.of(row), user_errors=[])

        return await mutate(info, op, partner_errors)


class AlertSubscriptions:
    """Root subscription fields of the alerts domain (the live module defines them)."""


# ---------------------------------------------------------------- node(id:)


async def _resolve_event(info: Any, pk: int) -> QuotaAlertEvent | None:
    actor = info.context.require_actor()
    session = await info.context.session()
    row = await session.get(AlertEvent, pk)
    if row is None:
        return None
    account = await session.get(Account, row.account_id)
    return QuotaAlertEvent.of(row) if ops.event_visible(actor, row, account) else None


async def _resolve_notification(info: Any, pk: int) -> EmailNotification | None:
    actor = info.context.require_actor()
    session = await info.context.session()
    row = await session.get(EmailRow, pk)
    if row is None:
        return None
    account = await session.get(Account, row.account_id) if row.account_id is not None else None
    event = await session.get(AlertEvent, row.alert_event_id) if row.alert_event_id is not None else None
    return EmailNotification.of(row, event) if ops.notification_visible(actor, row, account, event) else None


register_node("QuotaAlertEvent", _resolve_event)
register_node("EmailNotification", _resolve_notification)

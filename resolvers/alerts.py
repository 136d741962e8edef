"""Alert operations: end users' credit alerts, the partner's alert emails, and the event and email lists.

The crossing rule itself (evaluation after every pool change, events, emails,
automatic actions) lives in resolvers.crossing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import (
    Account,
    AlertEvent,
    CreditAlert,
    EmailNotification,
    Partner,
)
from uidhub.models.enums import (
    AlertKind,
    AlertState,
    AuditAction,
    ErrorCode,
    NotificationStatus,
)
from uidhub.models.money import format_money
from uidhub.models.rows import AccountLike
from uidhub.resolvers import accounts as account_ops
from uidhub.resolvers import audit
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.crossing import evaluate_pool
from uidhub.resolvers.errors import UserError, UserErrors
from uidhub.resolvers.locks import lock_partner, lock_pool
from uidhub.resolvers.pagination import Page, check_list, newest_first

EVENT_CURSOR = "alert"
NOTIFICATION_CURSOR = "mail"
MAX_ALERT_EMAILS = 100


# ---------------------------------------------------------------- evaluation


# ---------------------------------------------------------------- mutations


def _credit_alert_snapshot(alert: CreditAlert | None) -> dict[str, Any]:
    if alert is None:
        return {}
    return {"enabled": alert.enabled, "threshold": format_money(alert.threshold_cents), "email": alert.email}


async def set_credit_alert(
    session: AsyncSession,
    actor: Actor,
    *,
    uid: str,
    enabled: bool,
    threshold_cents: int,
    email: str,
) -> Account:
    """Create or change the account's credit alert, audited, and evaluate it against the pool at once."""
    actor.require(Permission.CREDIT_ALERT)
    errors: list[UserError] = []
    email = email.strip()
    if (problem := account_ops.check_email(email, "input", "email")) is not None:
        errors.append(problem)
    if threshold_cents < 0:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "threshold must not be negative.", ("input", "threshold")))
    if errors:
        raise UserErrors(errors)
    account = await account_ops.get(session, actor, uid, "input", "uid", share=True)
    account_ops.require_active(account, "input", "uid")
    # The pool lock serialises this with every other change of the pool and its alerts.
    pool = await lock_pool(session, account.pool_id)
    alert = await session.get(CreditAlert, account.id, populate_existing=True)
    before = _credit_alert_snapshot(alert)
    created = alert is None
    if alert is None:
        alert = CreditAlert(account_id=account.id, pool_id=account.pool_id, below=False)
        session.add(alert)
    alert.pool_id = account.pool_id
    alert.enabled = enabled
    alert.threshold_cents = threshold_cents
    alert.email = email
    if not enabled:
        alert.below = False  # a disabled alert forgets its side; re-enabling below it is a new breach
    old, new = audit.diff(before, _credit_alert_snapshot(alert))
    if new:
        audit.record(
            session, actor, account, AuditAction.CREDIT_ALERT_CHANGED, before=None if created else old, after=new
        )
    await session.flush()
    await evaluate_pool(session, pool)
    await session.flush()
    return account


async def set_alert_emails(session: AsyncSession, actor: Actor, emails: Sequence[str]) -> Partner:
    """Replace the partner's quota warning recipients (ADMIN): at most 100 valid addresses, deduplicated."""
    actor.require(Permission.ALERT_EMAILS)
    if len(emails) > MAX_ALERT_EMAILS:
        raise UserErrors.one(ErrorCode.INVALID_INPUT, f"At most {MAX_ALERT_EMAILS} alert emails.", "input", "emails")
    errors: list[UserError] = []
    cleaned: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(emails):
        address = raw.strip()
        problem = account_ops.check_email(address, "input", "emails", str(index))
        if problem is not None:
            errors.append(problem)
            continue
        if address.lower() not in seen:
            seen.add(address.lower())
            cleaned.append(address)
    if errors:
        raise UserErrors(errors)
    partner = await lock_partner(session, actor.partner_id)
    partner.alert_emails = cleaned
    await session.flush()
    return partner


# ---------------------------------------------------------------- lists


def event_visible(actor: Actor, event: AlertEvent, account: AccountLike | None) -> bool:
    """Whether `actor` may see `event` (its partner's; for END_USER, its own accounts' only)."""
    if event.partner_id != actor.partner_id:
        return False
    if actor.account_id is None:
        return True
    return account is not None and account_ops.visible(actor, account)


def event_conditions(
    actor: Actor,
    *,
    account_id: int | None = None,
    kinds: Sequence[AlertKind] | None = None,
    states: Sequence[AlertState] | None = None,
) -> list[Any]:
    """WHERE conditions for the events `actor` may see, filtered (shared with the live subscriptions)."""
    conditions: list[Any] = [AlertEvent.partner_id == actor.partner_id]
    if actor.account_id is not None:
        conditions.append(AlertEvent.account_id.in_(select(Account.id).where(actor.account_scope())))
    if account_id is not None:
        conditions.append(AlertEvent.account_id == account_id)
    if kinds:
        conditions.append(AlertEvent.kind.in_(list(kinds)))
    if states:
        conditions.append(AlertEvent.state.in_(list(states)))
    return conditions


async def list_events(
    session: AsyncSession,
    actor: Actor,
    *,
    first: int | None,
    after: str | None,
    account_id: int | None = None,
    kinds: Sequence[AlertKind] | None = None,
    states: Sequence[AlertState] | None = None,
) -> Page[AlertEvent]:
    """The actor's visible events, newest first (ids increase in commit order), keyset by id."""
    check_list(kinds, "kinds")
    check_list(states, "states")
    conditions = event_conditions(actor, account_id=account_id, kinds=kinds, states=states)
    return await newest_first(session, AlertEvent, conditions, first=first, after=after, cursor_kind=EVENT_CURSOR)


def notification_conditions(actor: Actor, status: NotificationStatus | None = None) -> list[Any]:
    conditions: list[Any] = [EmailNotification.partner_id == actor.partner_id]
    if actor.account_id is not None:
        # An end user sees the credit alert emails of its own accounts; quota warnings go to the partner's
        # people (their addresses are the partner's business), so they are not listed for END_USER tokens.
        conditions.append(EmailNotification.account_id.in_(select(Account.id).where(actor.account_scope())))
        conditions.append(
            EmailNotification.alert_event_id.in_(
                select(AlertEvent.id).where(
                    AlertEvent.kind == AlertKind.CREDIT_ALERT, AlertEvent.partner_id == actor.partner_id
                )
            )
        )
    if status is not None:
        conditions.append(EmailNotification.status == status)
    return conditions


def notification_visible(
    actor: Actor, row: EmailNotification, account: Account | None, event: AlertEvent | None
) -> bool:
    """The Python twin of `notification_conditions`, for node(id:)."""
    if row.partner_id != actor.partner_id:
        return False
    if actor.account_id is None:
        return True
    return (
        account is not None
        and account_ops.visible(actor, account)
        and event is not None
        and event.kind is AlertKind.CREDIT_ALERT
    )


async def list_notifications(
    session: AsyncSession,
    actor: Actor,
    *,
    first: int | None,
    after: str | None,
    status: NotificationStatus | None = None,
) -> Page[EmailNotification]:
    """The actor's visible outbox rows, newest first, keyset by id."""
    conditions = notification_conditions(actor, status)
    return await newest_first(
        session, EmailNotification, conditions, first=first, after=after, cursor_kind=NOTIFICATION_CURSOR
    )

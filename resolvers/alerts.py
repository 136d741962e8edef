"""Threshold alerts: crossing detection, events and the emails they queue.

The crossing rule (RULES.md, "Alerts"). A pool remembers on which side of each
threshold it was at the last evaluation (`QuotaPool.warning_below` for the
partner's QUOTA_WARNING, `CreditAlert.below` for each end user's
CREDIT_ALERT). `evaluate_pool` runs after every change to a pool, in the
change's transaction, with the pool row locked: it compares the pool's
available quota with each threshold and, only when the side differs from the
remembered one, flips the flag and stores one event (BREACHED when going
below, RECOVERED when back at or above). Staying on one side stores nothing,
however many changes happen.

Decisions this module documents:

* Removing the warning percent (null) while the pool is below resets the flag
  silently: no RECOVERED event (nothing recovered; there is no level any
  more). Setting a percent again while available is below the new level is a
  fresh BREACHED at once. A disabled credit alert likewise forgets its side
  (`set_credit_alert` resets `below`), and re-enabling it below the threshold
  is BREACHED at once.
* A credit alert set (or raised) above the current available is BREACHED at
  once: the new alert starts on the "not below" side, and the evaluation that
  follows the change finds it below.
* Every BREACHED event queues exactly one email in the same transaction
  (`notifications.log.add_alert`): QUOTA_WARNING to the partner's alert
  emails, CREDIT_ALERT to the address the end user gave. When the partner has
  no alert emails the event is stored and no email is queued (an outbox row
  without a recipient could never be delivered). RECOVERED events queue no
  email.
* QUOTA_WARNING events carry the pool owner (the master or standalone
  account) as their account; CREDIT_ALERT events carry the account that set
  the alert, which may be a sub-account spending from its master's pool.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Account, AlertEvent, CreditAlert, EmailNotification, Partner, QuotaPool
from models import rules as R
from models.base import utcnow
from models.enums import AlertKind, AlertState, AuditAction, ErrorCode, NotificationStatus
from models.money import format_money, percent_of
from notifications import log
from notifications.emails import queue_email_for_event
from resolvers import accounts as account_ops
from resolvers import audit
from resolvers.actor import Actor, Permission
from resolvers.errors import UserError, UserErrors
from resolvers.locks import lock_partner, lock_pool
from resolvers.pagination import Page, check_list, newest_first
from uidhub.settings import Settings

EVENT_CURSOR = "alert"
NOTIFICATION_CURSOR = "mail"
MAX_ALERT_EMAILS = 100


# ---------------------------------------------------------------- evaluation


@functools.cache
def _default_settings() -> Settings:
    return Settings()


def _settings(session: AsyncSession) -> Settings:
    """The app's settings (tz, console URL, sender) for email rendering; process defaults outside the app."""
    settings = session.info.get("settings") or getattr(session.info.get("db"), "settings", None)
    return settings if isinstance(settings, Settings) else _default_settings()


def _crossing(below_before: bool, below_now: bool) -> AlertState | None:
    if below_before == below_now:
        return None
    return AlertState.BREACHED if below_now else AlertState.RECOVERED


@dataclass
class _Crossing:
    event: AlertEvent
    account: Account
    recipients: Sequence[str]


async def evaluate_pool(session: AsyncSession, pool: QuotaPool) -> list[AlertEvent]:
    """Store BREACHED/RECOVERED events (and BREACHED emails) for the thresholds `pool` crossed.

    `pool` must be locked and up to date (see resolvers.pools). Costs one
    query for the credit alerts of the pool, plus, only when something
    crossed, one for the owner account and one for the partner.
    """
    available = pool.available_cents
    now = utcnow()
    crossings: list[_Crossing] = []

    # The partner's warning threshold (percent of the amount).
    if pool.warning_percent is None:
        if pool.warning_below:
            pool.warning_below = False  # no level, nothing to be below: forget the side silently
    else:
        level = percent_of(pool.amount_cents, pool.warning_percent)
        state = _crossing(
            bool(pool.warning_below), R.below_warning(available, pool.amount_cents, pool.warning_percent)
        )
        if state is not None:
            pool.warning_below = state is AlertState.BREACHED
            owner = await session.scalar(
                select(Account).where(Account.pool_id == pool.id, Account.master_id.is_(None)).limit(1)
            )
            if owner is not None:
                partner = await session.get(Partner, pool.partner_id)
                event = AlertEvent(
                    partner_id=pool.partner_id,
                    account_id=owner.id,
                    pool_id=pool.id,
                    kind=AlertKind.QUOTA_WARNING,
                    state=state,
                    available_cents=available,
                    threshold_cents=level,
                    occurred_at=now,
                )
                crossings.append(_Crossing(event, owner, list(partner.alert_emails or []) if partner else []))

    # Each end user's own absolute credit alert, for every account spending from this pool.
    rows = (
        await session.execute(
            select(CreditAlert, Account)
            .join(Account, Account.id == CreditAlert.account_id)
            .where(CreditAlert.pool_id == pool.id, CreditAlert.enabled.is_(True))
            .order_by(CreditAlert.account_id)
            .execution_options(populate_existing=True)
        )
    ).all()
    for alert, account in rows:
        state = _crossing(bool(alert.below), available < alert.threshold_cents)
        if state is None:
            continue
        alert.below = state is AlertState.BREACHED
        event = AlertEvent(
            partner_id=account.partner_id,
            account_id=account.id,
            pool_id=pool.id,
            kind=AlertKind.CREDIT_ALERT,
            state=state,
            available_cents=available,
            threshold_cents=alert.threshold_cents,
            occurred_at=now,
        )
        crossings.append(_Crossing(event, account, [alert.email]))

    if not crossings:
        return []
    settings = _settings(session)
    for crossing in crossings:
        email: EmailNotification | None = None
        if crossing.event.state is AlertState.BREACHED:
            try:
                email = queue_email_for_event(
                    crossing.event,
                    account_uid=crossing.account.uid,
                    account_nickname=crossing.account.nickname,
                    recipients=crossing.recipients,
                    settings=settings,
                )
            except ValueError:  # no recipient (a partner without alert emails): the event alone
                email = None
        log.add_alert(session, crossing.event, email)
    return [c.event for c in crossings]


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


def event_visible(actor: Actor, event: AlertEvent, account: Account | None) -> bool:
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

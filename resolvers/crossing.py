"""Threshold alerts: crossing detection, events and the emails they queue.

The crossing rule (RULES.md, "Alerts"). A pool remembers on which side of each
threshold it was at the last evaluation (`QuotaThreshold.below` for each of
the partner's pool thresholds — QUOTA_WARNING events, the first
PERCENT_OF_QUOTA one being the warning mirrored by `QuotaPool.warning_below`
— and `CreditAlert.below` for each end user's CREDIT_ALERT; see
resolvers.thresholds for the thresholds themselves). `evaluate_pool` runs after every change to a pool, in the
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
* A pool threshold's BREACHED email goes to its own recipients, or the
  partner's alert emails when it has none, and names its severity. A
  BREACHED crossing of a threshold with an action applies it (SYSTEM) or
  stores it as a pending action, in the same transaction.
* QUOTA_WARNING events carry the pool owner (the master or standalone
  account) as their account; CREDIT_ALERT events carry the account that set
  the alert, which may be a sub-account spending from its master's pool.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from uidhub.db import Database, rows_of
from uidhub.models import (
    Account,
    AlertEvent,
    CreditAlert,
    EmailNotification,
    LedgerEntry,
    Partner,
    PendingAction,
    QuotaPool,
    QuotaThreshold,
)
from uidhub.models import forecast as forecasts
from uidhub.models import rules as R
from uidhub.models.base import utcnow
from uidhub.models.enums import (
    AlertKind,
    AlertSeverity,
    AlertState,
    AuditAction,
    LedgerKind,
    PendingActionStatus,
    ThresholdAction,
    ThresholdKind,
)
from uidhub.models.money import percent_of
from uidhub.notifications import log
from uidhub.notifications.emails import queue_email_for_event
from uidhub.resolvers import audit, cascade
from uidhub.settings import Settings

#: Ledger entries that lower a pool's available amount: what a forecast extrapolates.
SPEND_KINDS = (LedgerKind.CONSUMPTION, LedgerKind.SUBSCRIPTION_ORDER)


@functools.cache
def _default_settings() -> Settings:
    """The documented defaults, never read from the environment: a session built outside the app (a script, a
    test) renders alert emails the same way on every machine instead of with whatever the process has set."""
    return Settings.model_construct()


def _settings(session: AsyncSession) -> Settings:
    """The settings of the database the session belongs to (tz, console URL, sender), or the documented defaults."""
    db = Database.of(session)
    settings = db.settings if db is not None else None
    return settings if settings is not None else _default_settings()


def _crossing(below_before: bool, below_now: bool) -> AlertState | None:
    if below_before == below_now:
        return None
    return AlertState.BREACHED if below_now else AlertState.RECOVERED


@dataclass(slots=True)
class ThresholdState:
    """The columns of a QuotaThreshold that an evaluation reads: plain tuples, not ORM rows.

    Every consumption evaluates every threshold of its pool; building ten full ORM objects (timestamps,
    identity map) per consumption was most of what ten thresholds cost over one.
    """

    id: int
    kind: ThresholdKind
    value: int
    severity: AlertSeverity
    recipients: list[str] | None
    action: ThresholdAction | None
    requires_approval: bool
    below: bool


_STATE_COLUMNS = (
    QuotaThreshold.id,
    QuotaThreshold.kind,
    QuotaThreshold.value,
    QuotaThreshold.severity,
    QuotaThreshold.recipients,
    QuotaThreshold.action,
    QuotaThreshold.requires_approval,
    QuotaThreshold.below,
)


@dataclass
class _Crossing:
    event: AlertEvent
    account: Account
    recipients: Sequence[str]
    threshold: ThresholdState | None = None


#: Days of spend the RUNS_OUT_WITHIN_DAYS thresholds forecast from (the default of `Quota.forecast`).
FORECAST_BASIS_DAYS = forecasts.DEFAULT_BASIS_DAYS


def recent_spend_query(pool_id: Any, since: Any, now: Any) -> Any:
    """Cents the pool spent (consumption and subscription orders) from `since` to `now`, as a scalar subquery.

    The arguments are values or bind parameters (`_thresholds_statement` builds it once).
    """
    return (
        select(func.coalesce(func.sum(LedgerEntry.amount_cents), 0))
        .where(
            LedgerEntry.pool_id == pool_id,
            LedgerEntry.kind.in_(SPEND_KINDS),
            LedgerEntry.occurred_at >= since,
            LedgerEntry.occurred_at <= now,
        )
        .scalar_subquery()
    )


@functools.cache
def _thresholds_statement() -> Any:
    """A pool's thresholds with the recent spend and whether it has enabled credit alerts (see `evaluate_pool`).

    Built once, with the pool and the spend window as parameters: building it cost more CPU than running it,
    on every balance change.
    """
    pool_id = bindparam("pool_id", type_=QuotaThreshold.pool_id.type)
    since = bindparam("since", type_=LedgerEntry.occurred_at.type)
    now = bindparam("now", type_=LedgerEntry.occurred_at.type)
    spent_column = case(
        (QuotaThreshold.kind == ThresholdKind.RUNS_OUT_WITHIN_DAYS, recent_spend_query(pool_id, since, now)),
        else_=None,
    )
    # One statement for both kinds of threshold: the pool's thresholds, outer-joined to one row so that a pool
    # without any still answers whether it has enabled credit alerts (most have none: their query is skipped).
    has_credit_alerts = (
        select(CreditAlert.account_id)
        .where(CreditAlert.pool_id == pool_id, CreditAlert.enabled.is_(True))
        .limit(1)
        .exists()
    )
    one_row = select(literal(1).label("one")).subquery("one_row")
    return (
        select(*_STATE_COLUMNS, spent_column, has_credit_alerts)
        .select_from(one_row)
        .outerjoin(QuotaThreshold, QuotaThreshold.pool_id == pool_id)
        .order_by(QuotaThreshold.id)
    )


class _PoolFacts:
    """What the thresholds of one pool are compared with.

    The recent spend comes with the thresholds, in the same statement, and only on the rows of
    RUNS_OUT_WITHIN_DAYS thresholds (a CASE around an uncorrelated subquery, which both databases run at
    most once and only when a row needs it): a pool without such a threshold never sums its ledger.
    """

    def __init__(self, pool: QuotaPool, spent: int | None) -> None:
        self.pool = pool
        self.spent = spent or 0

    def days_left(self) -> int | None:
        """The forecast's daysLeft, or None without recent spend.

        The same number as `models.forecast.forecast(...).days_left` (whole days at the exact pace), computed
        without the run-out date, which a pool with a huge line and a tiny burn could not even represent.
        """
        if self.spent <= 0:
            return None
        available = self.pool.available_cents
        return 0 if available <= 0 else available * FORECAST_BASIS_DAYS // self.spent

    def compare(self, threshold: ThresholdState) -> tuple[bool, int, int | None]:
        """(below now, the level in cents for the event, days left for RUNS_OUT_WITHIN_DAYS)."""
        pool = self.pool
        available = pool.available_cents
        if threshold.kind is ThresholdKind.PERCENT_OF_QUOTA:
            return (
                R.below_warning(available, pool.amount_cents, threshold.value),
                percent_of(pool.amount_cents, threshold.value),
                None,
            )
        if threshold.kind is ThresholdKind.AVAILABLE_BELOW:
            return available < threshold.value, threshold.value, None
        days_left = self.days_left()
        if days_left is None:
            return False, 0, None
        # The level: what lasts `value` days at the current burn (exact ratio, rounded half up to cents).
        level = (self.spent * threshold.value * 2 + FORECAST_BASIS_DAYS) // (2 * FORECAST_BASIS_DAYS)
        return days_left <= threshold.value, level, days_left


async def _flip(session: AsyncSession, threshold: ThresholdState, below: bool) -> bool:
    """Move the threshold to its new side, guarded on the old one: False when another transaction already did.

    The pool row is locked, so this never loses in practice; the guard makes "exactly once" hold even for a
    caller that evaluates without that lock.
    """
    flipped = await session.scalar(
        update(QuotaThreshold)
        .where(QuotaThreshold.id == threshold.id, QuotaThreshold.below == (not below))
        .values(below=below)
        .returning(QuotaThreshold.id)
        .execution_options(synchronize_session=False)
    )
    if flipped is None:
        return False
    threshold.below = below
    # A row of it this session already holds (a threshold mutation's) must not show the old side.
    loaded = session.identity_map.get(session.identity_key(QuotaThreshold, threshold.id))
    if loaded is not None:
        set_committed_value(loaded, "below", below)
    return True


async def evaluate_pool(
    session: AsyncSession, pool: QuotaPool, now: datetime | None = None, *, rules_current: bool = False
) -> list[AlertEvent]:
    """Store BREACHED/RECOVERED events (and BREACHED emails) for the thresholds `pool` crossed.

    `pool` must be locked and up to date (see resolvers.pools). `rules_current`: `pool.alert_rules` is
    the count the caller's own UPDATE … RETURNING gave (a balance change), so 0 reads nothing. Costs one
    query for the pool's thresholds (with the recent spend when one of them is
    RUNS_OUT_WITHIN_DAYS, and whether the pool has enabled credit alerts), one
    for the credit alerts only when it has some, plus,
    only when something crossed, one for the owner account, one for the
    partner and one guarded UPDATE per crossing. A BREACHED
    crossing of a threshold with an action applies it (or stores it for
    approval) in this transaction.
    """
    available = pool.available_cents
    now = now or utcnow()
    crossings: list[_Crossing] = []
    owner_partner: tuple[Account | None, Partner | None] | None = None

    async def owner_and_partner() -> tuple[Account | None, Partner | None]:
        nonlocal owner_partner
        if owner_partner is None:
            owner = await session.scalar(
                select(Account).where(Account.pool_id == pool.id, Account.master_id.is_(None)).limit(1)
            )
            partner = await session.get(Partner, pool.partner_id) if owner is not None else None
            owner_partner = (owner, partner)
        return owner_partner

    if rules_current and pool.alert_rules == 0:
        # No threshold row and no enabled credit alert watch the pool (the count the change's own UPDATE
        # returned, from the row it holds locked, and kept by triggers on both tables): nothing to read.
        rows: Sequence[Any] = []
        credit_alerts_exist = False
    else:
        window = {"pool_id": pool.id, "since": now - timedelta(days=FORECAST_BASIS_DAYS), "now": now}
        # Columns, not entities: Core rows (flushed first, as autoflush would), without the ORM's loading layer.
        rows = await rows_of(session, _thresholds_statement(), window)
        credit_alerts_exist = bool(rows[0][-1])
    rows = [row for row in rows if row[0] is not None]
    thresholds = [ThresholdState(*row[:-2]) for row in rows]
    facts = _PoolFacts(pool, next((int(row[-2]) for row in rows if row[-2] is not None), None))
    warning = next((t for t in thresholds if t.kind is ThresholdKind.PERCENT_OF_QUOTA), None)

    # A warning percent stored without its threshold row (data written around the resolvers): the old rule.
    if warning is None and pool.warning_percent is not None:
        state = _crossing(bool(pool.warning_below), R.below_warning(available, pool.amount_cents, pool.warning_percent))
        if state is not None:
            pool.warning_below = state is AlertState.BREACHED
            owner, partner = await owner_and_partner()
            if owner is not None:
                event = AlertEvent(
                    partner_id=pool.partner_id,
                    account_id=owner.id,
                    pool_id=pool.id,
                    kind=AlertKind.QUOTA_WARNING,
                    state=state,
                    available_cents=available,
                    threshold_cents=percent_of(pool.amount_cents, pool.warning_percent),
                    occurred_at=now,
                )
                crossings.append(_Crossing(event, owner, list(partner.alert_emails or []) if partner else []))
    elif warning is None and pool.warning_below:
        pool.warning_below = False  # no level, nothing to be below: forget the side silently

    for threshold in thresholds:
        below_now, level, days_left = facts.compare(threshold)
        state = _crossing(bool(threshold.below), below_now)
        if state is None or not await _flip(session, threshold, below_now):
            continue
        if threshold is warning:
            pool.warning_below = below_now  # the mirror read by the warning filters
        owner, partner = await owner_and_partner()
        if owner is None:
            continue
        recipients = (
            threshold.recipients
            if threshold.recipients is not None
            else (list(partner.alert_emails or []) if partner else [])
        )
        event = AlertEvent(
            partner_id=pool.partner_id,
            account_id=owner.id,
            pool_id=pool.id,
            kind=AlertKind.QUOTA_WARNING,
            state=state,
            available_cents=available,
            threshold_cents=level,
            occurred_at=now,
            threshold_id=threshold.id,
            threshold_kind=threshold.kind,
            severity=threshold.severity,
            days_left=days_left,
        )
        crossings.append(_Crossing(event, owner, list(recipients), threshold))

    # Each end user's own absolute credit alert, for every account spending from this pool.
    alert_rows = (
        (
            await session.execute(
                select(CreditAlert, Account)
                .join(Account, Account.id == CreditAlert.account_id)
                .where(CreditAlert.pool_id == pool.id, CreditAlert.enabled.is_(True))
                .order_by(CreditAlert.account_id)
                .execution_options(populate_existing=True)
            )
        ).all()
        if credit_alerts_exist
        else []
    )
    for alert, account in alert_rows:
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
    for crossing in crossings:
        crossed = crossing.threshold
        if crossed is not None and crossed.action is not None and crossing.event.state is AlertState.BREACHED:
            await _breach_action(session, pool, crossing.account, crossed)
    return [c.event for c in crossings]


def action_reason(threshold: ThresholdState) -> str:
    """The reason written on the audit entries of an automatic action."""
    return f"Automatic action of alert threshold {threshold.id} ({threshold.kind.value}, {threshold.severity.value})."


async def _breach_action(session: AsyncSession, pool: QuotaPool, owner: Account, threshold: ThresholdState) -> None:
    """Apply the threshold's action now (SYSTEM), or store it for an operator's approval.

    Only the BREACHED crossing itself gets here, so an operator who undoes the
    action (unban, unfreeze) is not overruled until the threshold recovers and
    is breached again.
    """

    assert threshold.action is not None
    if threshold.requires_approval:
        pending = PendingAction(
            partner_id=pool.partner_id,
            pool_id=pool.id,
            account_id=owner.id,
            threshold_id=threshold.id,
            action=threshold.action,
            severity=threshold.severity,
            status=PendingActionStatus.PENDING,
        )
        session.add(pending)
        await session.flush()
        audit.record(
            session,
            None,
            owner,
            AuditAction.PENDING_ACTION_CREATED,
            after={"pendingActionId": pending.id, "action": threshold.action.value, "thresholdId": threshold.id},
            reason=action_reason(threshold),
        )
        return
    # Out of the usual order: the accounts are locked after the pool (a breach is only known once the pool
    # changed). A deadlock this rarely causes is retried whole by uidhub.db.retry_transaction.
    if threshold.action is ThresholdAction.BAN_PURCHASES:
        await cascade.ban_owner(session, None, owner.id, action_reason(threshold))
    else:
        await cascade.freeze_owner(session, None, owner.id, action_reason(threshold))

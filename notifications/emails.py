"""Alert emails: what they say, and the outbox rows that carry them.

Rendering is a pure function of the alert, so the text that was queued is
exactly the text that leaves, however late the sender gets to it (an outbox
row keeps its subject and bodies; nothing is re-rendered at send time).

Money is shown with `models.money.format_money` (two decimals, no float) and a
currency label; times are shown in the display timezone with the offset
spelled out ("2026-11-27 09:30:00 UTC+08:00"), because a reader in another
timezone must not have to guess which clock the time is on.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parseaddr
from typing import TYPE_CHECKING

from uidhub.models.enums import AlertKind, AlertState, NotificationStatus, ThresholdKind
from uidhub.models.money import format_money
from uidhub.models.tables import EmailNotification

if TYPE_CHECKING:
    from uidhub.models.tables import AlertEvent
    from uidhub.settings import Settings

CURRENCY = "USD"
PRODUCT = "uidhub"
DEFAULT_DOMAIN = "uidhub.localhost"
SUBJECT_MAX = 300  # EmailNotification.subject is VARCHAR(300)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,150}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """One alert email: a one-line subject, a plain-text body and its HTML twin."""

    subject: str
    text: str
    html: str


def format_amount(cents: int) -> str:
    """Money for people: "1250.00 USD" (format_money, so never through a float)."""
    return f"{format_money(cents)} {CURRENCY}"


def format_offset(tz: timezone, at: datetime | None = None) -> str:
    """The offset of `tz` as "UTC+08:00" / "UTC-03:30" (UTC itself is "UTC+00:00")."""
    offset = tz.utcoffset(at) or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def format_time(at: datetime, tz: timezone) -> str:
    """An aware instant in the display timezone, with the offset named: "2026-11-27 09:30:00 UTC+08:00"."""
    if at.tzinfo is None:
        raise ValueError("naive datetime")
    local = at.astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M:%S} {format_offset(tz, local)}"


def _one_line(value: str) -> str:
    """Header-safe text: a nickname may hold newlines (the contract allows them), a header may not."""
    return _CONTROL.sub(" ", value)


def _account_label(uid: str, nickname: str | None) -> str:
    return f"{uid} ({nickname})" if nickname else uid


def sender_domain(sender: str) -> str:
    """The domain of the From address, for Message-IDs; a safe default when it has none."""
    address = parseaddr(sender)[1]
    domain = address.rpartition("@")[2].strip().rstrip(".") if "@" in address else ""
    return domain if _DOMAIN.match(domain) else DEFAULT_DOMAIN


def message_id_for(notification_id: int, domain: str) -> str:
    """A Message-ID derived from a stored notification id: the same id always gives the same header."""
    return f"<{PRODUCT}-notification-{notification_id}@{domain}>"


def new_message_id(domain: str) -> str:
    """A fresh, globally unique Message-ID, minted when an outbox row is built.

    The row id is unknown until the INSERT, and the email must already carry
    its final Message-ID then (it is a UNIQUE column), so a uuid4 is used
    instead of the row id. It is stored with the row and never changes: every
    retry, and a re-send after a crash, carries the same header, which is what
    lets receiving systems recognise a duplicate.
    """
    return f"<{PRODUCT}-{uuid.uuid4().hex}@{domain}>"


def render_alert_email(
    *,
    kind: AlertKind,
    state: AlertState,
    account_uid: str,
    account_nickname: str | None,
    available_cents: int,
    threshold_cents: int,
    occurred_at: datetime,
    tz: timezone,
    console_url: str,
    product: str = PRODUCT,
    severity: str | None = None,
    detail: str | None = None,
) -> RenderedEmail:
    """Render one alert email.

    QUOTA_WARNING goes to the partner: it names the customer account and tells
    the partner to review the quota, raise the credit line or contact the
    customer. CREDIT_ALERT goes to the end user: it tells them to top up or
    repay, and to contact their partner. Both state the account (UID and
    nickname), the available quota, the level and the time with its offset.
    Every user-supplied string is HTML-escaped in the HTML part and flattened
    to one line in the subject. A pool threshold's `severity` is named in the
    subject and the table, and `detail` (what the threshold is) in the table:
    a reader must see at once how urgent it is and which threshold it was.
    """
    available = format_amount(available_cents)
    level = format_amount(threshold_cents)
    when = format_time(occurred_at, tz)
    label = _one_line(_account_label(account_uid, account_nickname))
    breached = state == AlertState.BREACHED
    partner_side = kind == AlertKind.QUOTA_WARNING

    if partner_side:
        level_name = "Warning level"
        if breached:
            subject = f"[{product}] Quota warning: {label} available quota {available} is below {level}"
            headline = f"Quota warning for customer account {label}"
            summary = (
                f"The available quota of customer account {account_uid} fell below its warning level: "
                f"{available} available, warning level {level}."
            )
            actions = [
                "Review this customer's quota and recent consumption in the partner console.",
                "Raise the credit line (quota amount) if the customer should keep spending, "
                "or contact the customer to arrange repayment before the quota runs out.",
            ]
        else:
            subject = f"[{product}] Quota recovered: {label} available quota {available} is back at or above {level}"
            headline = f"Quota recovered for customer account {label}"
            summary = (
                f"The available quota of customer account {account_uid} is back at or above its warning level: "
                f"{available} available, warning level {level}."
            )
            actions = ["Nothing needs to be done. The quota can be reviewed in the partner console."]
    else:
        level_name = "Alert threshold"
        if breached:
            subject = f"[{product}] Credit alert: {label} available credit {available} is below {level}"
            headline = f"Credit alert for your account {label}"
            summary = (
                f"The available credit of your account {account_uid} fell below the alert threshold you set: "
                f"{available} available, threshold {level}."
            )
            actions = [
                "Top up or repay your outstanding consumption so that your services keep running.",
                "Contact your partner if you need a higher credit line.",
            ]
        else:
            subject = f"[{product}] Credit recovered: {label} available credit {available} is back at or above {level}"
            headline = f"Credit recovered for your account {label}"
            summary = (
                f"The available credit of your account {account_uid} is back at or above the alert threshold "
                f"you set: {available} available, threshold {level}."
            )
            actions = ["Nothing needs to be done."]

    if severity:
        subject = f"[{severity}] {subject}"
    subject = _one_line(subject)
    if len(subject) > SUBJECT_MAX:
        subject = subject[: SUBJECT_MAX - 1] + "…"

    nickname_shown = account_nickname if account_nickname else "-"
    rows = [
        ("Account UID", account_uid),
        ("Nickname", nickname_shown),
        ("Available quota" if partner_side else "Available credit", available),
        (level_name, level),
        ("Time", when),
    ]
    if detail:
        rows.insert(4, ("Threshold", detail))
    if severity:
        rows.insert(0, ("Severity", severity))
    width = max(len(name) for name, _ in rows) + 2
    text_lines = [headline, "", summary, ""]
    text_lines += [f"{name + ':':<{width}}{value}" for name, value in rows]
    text_lines += ["", "What to do:"]
    text_lines += [f"- {action}" for action in actions]
    text_lines += [f"- Console: {console_url}", "", f"This is an automatic message from {product}."]
    text = "\n".join(text_lines) + "\n"

    e = html.escape
    table = "\n".join(
        f'<tr><th align="left" style="padding-right:1em">{e(name)}</th><td>{e(value)}</td></tr>' for name, value in rows
    )
    items = "\n".join(f"<li>{e(action)}</li>" for action in actions)
    items += f'\n<li>Console: <a href="{e(console_url, quote=True)}">{e(console_url)}</a></li>'
    html_body = (
        "<!DOCTYPE html>\n"
        f'<html><head><meta charset="utf-8"><title>{e(subject)}</title></head>\n'
        "<body>\n"
        f"<h2>{e(headline)}</h2>\n"
        f"<p>{e(summary)}</p>\n"
        f'<table style="white-space:pre-wrap">\n{table}\n</table>\n'
        f"<h3>What to do</h3>\n<ul>\n{items}\n</ul>\n"
        f"<p><small>This is an automatic message from {e(product)}.</small></p>\n"
        "</body></html>\n"
    )
    return RenderedEmail(subject=subject, text=text, html=html_body)


def _clean_recipients(recipients: Sequence[str]) -> list[str]:
    """Trimmed, non-empty, without case-insensitive duplicates, in the order given."""
    seen: set[str] = set()
    result: list[str] = []
    for raw in recipients:
        address = raw.strip()
        if address and address.lower() not in seen:
            seen.add(address.lower())
            result.append(address)
    return result


def queue_email(
    *,
    partner_id: int,
    account_id: int | None,
    recipients: Sequence[str],
    kind: AlertKind,
    state: AlertState,
    account_uid: str,
    account_nickname: str | None,
    available_cents: int,
    threshold_cents: int,
    occurred_at: datetime,
    tz: timezone,
    console_url: str,
    sender: str,
    alert_event_id: int | None = None,
    severity: str | None = None,
    detail: str | None = None,
) -> EmailNotification:
    """Build (not add) the outbox row for one alert email.

    The caller hands it to `notifications.log.add_alert` so that it commits
    in the same transaction as its event (which also fills in
    `alert_event_id`). The Message-ID is minted now from a uuid4 and kept
    forever (see `new_message_id`). Raises ValueError when there is no
    recipient: the caller should then queue nothing.
    """
    to = _clean_recipients(recipients)
    if not to:
        raise ValueError("an alert email needs at least one recipient")
    rendered = render_alert_email(
        kind=kind,
        state=state,
        account_uid=account_uid,
        account_nickname=account_nickname,
        available_cents=available_cents,
        threshold_cents=threshold_cents,
        occurred_at=occurred_at,
        tz=tz,
        console_url=console_url,
        severity=severity,
        detail=detail,
    )
    now = datetime.now(UTC)
    return EmailNotification(
        partner_id=partner_id,
        alert_event_id=alert_event_id,
        account_id=account_id,
        recipients=to,
        subject=rendered.subject,
        body_text=rendered.text,
        body_html=rendered.html,
        message_id=new_message_id(sender_domain(sender)),
        status=NotificationStatus.PENDING,
        attempts=0,
        last_error=None,
        next_attempt_at=now,
        claimed_until=None,
        created_at=now,
    )


def queue_email_for_event(
    event: AlertEvent,
    *,
    account_uid: str,
    account_nickname: str | None,
    recipients: Sequence[str],
    settings: Settings,
) -> EmailNotification:
    """`queue_email` for a (not yet flushed) AlertEvent, with tz, console URL and sender from settings."""
    return queue_email(
        partner_id=event.partner_id,
        account_id=event.account_id,
        recipients=recipients,
        kind=event.kind,
        state=event.state,
        account_uid=account_uid,
        account_nickname=account_nickname,
        available_cents=event.available_cents,
        threshold_cents=event.threshold_cents,
        occurred_at=event.occurred_at or datetime.now(UTC),
        tz=settings.tz,
        console_url=settings.console_url,
        sender=settings.smtp_sender,
        alert_event_id=event.id,
        severity=event.severity.value if event.severity is not None else None,
        detail=threshold_detail(event),
    )


def threshold_detail(event: AlertEvent) -> str | None:
    """What a pool threshold's event is about, in words for the email; None for events without one."""
    kind = event.threshold_kind
    if kind is None:
        return None
    if kind == ThresholdKind.RUNS_OUT_WITHIN_DAYS:
        left = "no forecast" if event.days_left is None else f"forecast {event.days_left} days left"
        return f"Runs out within the set number of days at the recent pace ({left})"
    if kind == ThresholdKind.AVAILABLE_BELOW:
        return f"Available below {format_amount(event.threshold_cents)}"
    return f"Available below {format_amount(event.threshold_cents)} (percent of the quota amount)"

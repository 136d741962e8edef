"""The stored, append-only log: audit entries, alert events and their emails.

Rows of the log are not added to the session when a rule produces them but
buffered, and inserted by `commit()` as the very last step of the
transaction. On PostgreSQL that step first takes a transaction-scoped
advisory lock, so log ids are handed out in commit order: a subscriber that
has seen id N can never later find a committed id below N (sequence values
alone are handed out in *start* order, and a slow transaction would commit an
older id after a newer one). The lock is held only for the inserts and the
commit. SQLite write transactions are serialised by BEGIN IMMEDIATE already.

After the commit, the topics the rows touched are published on the bus so
that subscribers wake up and read the log; the bus carries no data. The
publish never delays the caller: local waiters are woken at once and the
Redis publish runs in the background with a short timeout
(`notifications.bus.RedisBus`), so a hung Redis costs a mutation nothing.

The advisory lock is the last lock of the order in `resolvers.locks`: every
row lock of the transaction is taken before it, and its holder only inserts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import AlertEvent, AuditEntry, EmailNotification

if TYPE_CHECKING:
    from uidhub.notifications.bus import Bus

log = logging.getLogger(__name__)

LOG_LOCK_KEY = 0x0D1D_4B
_PENDING = "uidhub_pending_log"
_TOPICS = "uidhub_topics"
#: Wakes the webhook dispatcher (notifications.webhooks.TOPIC) after any log rows commit.
WEBHOOK_TOPIC = "webhooks"


@dataclass
class PendingAlert:
    event: AlertEvent
    email: EmailNotification | None = None


@dataclass
class _Pending:
    audit: list[AuditEntry] = field(default_factory=list)
    alerts: list[PendingAlert] = field(default_factory=list)


def _pending(session: AsyncSession) -> _Pending:
    pending = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = _Pending()
    return pending


def add_audit(session: AsyncSession, entry: AuditEntry) -> None:
    """Buffer an audit entry; it is inserted when the transaction commits."""
    _pending(session).audit.append(entry)


def add_alert(session: AsyncSession, event: AlertEvent, email: EmailNotification | None) -> None:
    """Buffer an alert event and the email it queues; both commit with the change."""
    _pending(session).alerts.append(PendingAlert(event, email))


def add_topic(session: AsyncSession, topic: str) -> None:
    """Wake subscribers of `topic` once this transaction has committed."""
    session.info.setdefault(_TOPICS, set()).add(topic)


def pending_audit(session: AsyncSession) -> list[AuditEntry]:
    """What this transaction will append (tests and payloads look)."""
    return list(_pending(session).audit)


def discard(session: AsyncSession) -> None:
    """Forget buffered rows and topics, e.g. after a rollback."""
    session.info.pop(_PENDING, None)
    session.info.pop(_TOPICS, None)


async def flush_log(session: AsyncSession) -> None:
    """Insert the buffered rows now, in commit order (see the module docstring)."""
    pending: _Pending | None = session.info.pop(_PENDING, None)
    if pending is None or not (pending.audit or pending.alerts):
        return
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOG_LOCK_KEY})
    topics: set[str] = session.info.setdefault(_TOPICS, set())
    topics.add(WEBHOOK_TOPIC)  # the webhook dispatcher reads the log too
    session.add_all(pending.audit)
    for entry in pending.audit:
        topics.add(f"audit:{entry.partner_id}")
    events = [item.event for item in pending.alerts]
    session.add_all(events)
    await session.flush()
    emails: list[EmailNotification] = []
    for item in pending.alerts:
        topics.add(f"alerts:{item.event.partner_id}")
        if item.email is not None:
            item.email.alert_event_id = item.event.id
            emails.append(item.email)
    if emails:
        session.add_all(emails)
        topics.add("outbox")
        await session.flush()


async def commit(session: AsyncSession, bus: Bus | None) -> None:
    """Insert the buffered log, commit, then wake the subscribers of what changed on `bus` (without waiting for Redis).

    The bus is passed by whoever owns the transaction (`Database.write`, the GraphQL mutation): None commits
    without waking anyone (a script with no subscribers)."""
    try:
        await flush_log(session)
        await session.commit()
    except BaseException:
        discard(session)
        raise
    topics: set[str] = session.info.pop(_TOPICS, set())
    if topics and bus is not None:
        await bus.publish(*sorted(topics))

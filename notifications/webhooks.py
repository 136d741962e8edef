"""Signed webhooks: the dispatcher (stored log → deliveries) and the sender (deliveries → HTTP POSTs).

Where events come from. The same stored log the live subscriptions read:
audit entries and alert events, whose ids are handed out in commit order
(notifications.log). A dispatcher pass reads each log after its cursor
(`webhook_cursors`), turns every row into one delivery per enabled endpoint of
the row's partner that subscribed to its kind, and moves the cursor, all in
one transaction: an event is turned into deliveries exactly once, and a crash
in between repeats the whole pass (the unique (endpoint, event) pair absorbs
it). Export tasks are not in the log; the export worker queues their
EXPORT_FINISHED deliveries in the transaction that finishes the task.

Order and exactly one sender. Deliveries of one endpoint go out in id order,
one at a time: a sender leases the *endpoint* (`claimed_until`; taken with
FOR UPDATE SKIP LOCKED on PostgreSQL, under BEGIN IMMEDIATE on SQLite), sends
the oldest pending delivery, records the attempt under its lease, and goes on
to the next only after a success. A failure keeps the later deliveries waiting
behind it (a receiver never sees event 7 before event 6). Every write about an
attempt is guarded by the lease, so a sender whose lease ran out cannot record
over another's. As with the email outbox, the one window no queue closes is a
crash after the receiver answered 2xx and before SUCCEEDED commits: the POST
is repeated, with the same `Uidhub-Event-Id`, so receivers can deduplicate.

Retries. A failed attempt (no 2xx within the time limit, a redirect, a refused
address) is retried with exponential backoff for `webhook_retry_hours`,
counted from the delivery's first failure; then it is FAILED. An endpoint on
which every attempt has failed for that long is disabled, and the partner's
alert emails are told once (through the email outbox, in the same transaction).

Signatures (Stripe's scheme). `Uidhub-Signature: t=<unix seconds>,v1=<hex>`
where the hex is HMAC-SHA256 of `<t>.<raw body>` keyed with the endpoint's
secret. During the 24 hours after a rotation a second `v1=` carries the
signature with the previous secret, so a receiver holding either verifies.

SSRF. Only https URLs, unless `webhook_allow_http_loopback` allows http to a
loopback address (tests, local tools). The host is resolved before each POST
and every address must be public (no private, loopback, link-local, multicast
or reserved range) unless `webhook_allow_private` is set; the POST then goes
to the address that was checked (the original host name is kept for the Host
header and TLS), so a DNS answer cannot change between the check and the
connection. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import httpx
from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from uidhub.models import Account, AlertEvent, AuditEntry, EmailNotification, Partner
from uidhub.models.enums import AuditAction, NotificationStatus, WebhookDeliveryStatus, WebhookEventKind
from uidhub.models.money import format_money
from uidhub.models.tables import WebhookAttempt, WebhookCursor, WebhookDelivery, WebhookEndpoint
from uidhub.notifications import log as event_log
from uidhub.notifications import signals
from uidhub.notifications.bus import Wakeup
from uidhub.notifications.emails import new_message_id, sender_domain

if TYPE_CHECKING:
    from uidhub.db import Database
    from uidhub.notifications.bus import Bus
    from uidhub.settings import Settings

log = logging.getLogger(__name__)

TOPIC = event_log.WEBHOOK_TOPIC
SIGNATURE_HEADER = "Uidhub-Signature"
EVENT_ID_HEADER = "Uidhub-Event-Id"
DELIVERY_ID_HEADER = "Uidhub-Delivery-Id"
EVENT_KIND_HEADER = "Uidhub-Event-Kind"
USER_AGENT = "uidhub-webhooks/1"
SECRET_PREFIX = "whsec_"
#: How long the previous secret keeps signing after a rotation.
ROTATION_OVERLAP = timedelta(hours=24)
#: How much of a receiver's answer is read (the status code is what counts).
RESPONSE_CAP_BYTES = 64 * 1024
ERROR_MAX = 500
MAX_BACKOFF_SECONDS = 3600.0
DISPATCH_BATCH = 500
#: Deliveries one endpoint claim may send before the endpoint is offered to other senders again.
PER_CLAIM = 20
CLAIM_ENDPOINTS = 20
LEASE_MARGIN = timedelta(seconds=30)
START_MARGIN = timedelta(seconds=5)

#: Which audit actions each event kind stands for. Actions not listed are not offered as webhooks.
AUDIT_KINDS: dict[AuditAction, WebhookEventKind] = {
    AuditAction.ACCOUNT_LINKED: WebhookEventKind.ACCOUNT_LINKED,
    AuditAction.BASIC_INFO_UPDATED: WebhookEventKind.ACCOUNT_UPDATED,
    AuditAction.ACCOUNT_STATUS_CHANGED: WebhookEventKind.ACCOUNT_STATUS_CHANGED,
    AuditAction.PAYG_FROZEN: WebhookEventKind.POLICY_CHANGED,
    AuditAction.PAYG_UNFROZEN: WebhookEventKind.POLICY_CHANGED,
    AuditAction.PURCHASE_CONTROL_CHANGED: WebhookEventKind.POLICY_CHANGED,
    AuditAction.SHUTDOWN_POLICY_CHANGED: WebhookEventKind.POLICY_CHANGED,
    AuditAction.CREDIT_CONTROL_CHANGED: WebhookEventKind.POLICY_CHANGED,
    AuditAction.QUOTA_CREATED: WebhookEventKind.QUOTA_CHANGED,
    AuditAction.QUOTA_ADJUSTED: WebhookEventKind.QUOTA_CHANGED,
    AuditAction.WARNING_THRESHOLD_CHANGED: WebhookEventKind.QUOTA_CHANGED,
    AuditAction.CREDIT_ALERT_CHANGED: WebhookEventKind.QUOTA_CHANGED,
    AuditAction.OUTSTANDING_REPAID: WebhookEventKind.QUOTA_CHANGED,
    AuditAction.ORDER_PLACED: WebhookEventKind.ORDER_PLACED,
    AuditAction.THRESHOLD_ADDED: WebhookEventKind.QUOTA_CHANGED,
    AuditAction.THRESHOLD_CHANGED: WebhookEventKind.QUOTA_CHANGED,
    AuditAction.THRESHOLD_REMOVED: WebhookEventKind.QUOTA_CHANGED,
    AuditAction.PENDING_ACTION_CREATED: WebhookEventKind.POLICY_CHANGED,
    AuditAction.PENDING_ACTION_APPROVED: WebhookEventKind.POLICY_CHANGED,
    AuditAction.PENDING_ACTION_DISMISSED: WebhookEventKind.POLICY_CHANGED,
}


#: The stored logs the dispatcher reads, each with its cursor's name.
LOG_SOURCES: tuple[tuple[str, type[AuditEntry] | type[AlertEvent]], ...] = (
    ("audit", AuditEntry),
    ("alerts", AlertEvent),
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- secrets and signatures


def new_secret() -> str:
    """A fresh signing secret: 32 random bytes, url-safe, with a recognisable prefix."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 of `<timestamp>.<body>` keyed with `secret`, as hex."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secrets_: Sequence[str], timestamp: int, body: bytes) -> str:
    """`t=<timestamp>,v1=<sig>[,v1=<sig>]`: one v1 per secret that currently signs."""
    return ",".join([f"t={timestamp}", *(f"v1={sign(s, timestamp, body)}" for s in secrets_)])


def signing_secrets(
    secret: str, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> list[str]:
    """The current secret, and the previous one while its overlap lasts."""
    result = [secret]
    if previous and previous_expires_at is not None and _aware(previous_expires_at) > now:
        result.append(previous)
    return result


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


# ---------------------------------------------------------------- URLs (SSRF)


class UnsafeUrl(ValueError):
    """A webhook URL or address the settings do not allow."""


def _loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_loopback


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def check_url(url: str, *, allow_http_loopback: bool, allow_private: bool) -> str:
    """The URL, normalised, or UnsafeUrl saying why it is refused (no DNS: see `resolve_target`)."""
    url = url.strip()
    if len(url) > 2000:
        raise UnsafeUrl("The URL is longer than 2000 characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrl("The URL is not valid.") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeUrl("The URL must be an absolute https:// URL.")
    if parts.username or parts.password:
        raise UnsafeUrl("The URL must not carry a user name or password.")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise UnsafeUrl("The URL must not contain spaces or control characters.")
    if port == 0:
        raise UnsafeUrl("The URL's port is not valid.")
    literal = _ip_literal(parts.hostname)
    if parts.scheme == "http":
        if not (
            allow_http_loopback and (parts.hostname == "localhost" or (literal is not None and _loopback(literal)))
        ):
            raise UnsafeUrl("Webhook URLs must use https.")
        return url
    if literal is not None and not allow_private and not _public(literal):
        raise UnsafeUrl("The URL points to a private, loopback or link-local address.")
    if parts.hostname == "localhost" and not allow_private:
        raise UnsafeUrl("The URL points to a private, loopback or link-local address.")
    return url


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def _addresses(host: str, port: int) -> list[str]:
    """The host's addresses, as the system resolver answers."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class Target:
    """Where one POST goes: the checked address in the URL, the name for Host and TLS."""

    url: str
    host_header: str | None
    sni_hostname: str | None


async def resolve_target(url: str, *, allow_http_loopback: bool, allow_private: bool) -> Target:
    """Check the URL again, resolve its host and pin the POST to an address that passed the check."""
    check_url(url, allow_http_loopback=allow_http_loopback, allow_private=allow_private)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _ip_literal(host)
    if literal is not None:
        return Target(url=url, host_header=None, sni_hostname=None)
    try:
        addresses = [ipaddress.ip_address(a) for a in await _addresses(host, port)]
    except OSError as exc:
        raise UnsafeUrl(f"The host {host!r} does not resolve ({exc}).") from None
    if not addresses:
        raise UnsafeUrl(f"The host {host!r} does not resolve.")
    loopback_ok = parts.scheme == "http" and allow_http_loopback
    for address in addresses:
        if allow_private or _public(address) or (loopback_ok and _loopback(address)):
            continue
        raise UnsafeUrl(f"The host {host!r} resolves to a private, loopback or link-local address ({address}).")
    address = addresses[0]
    pinned_host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    netloc = pinned_host if parts.port is None else f"{pinned_host}:{parts.port}"
    pinned = parts._replace(netloc=netloc).geturl()
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    return Target(url=pinned, host_header=host_header, sni_hostname=host if parts.scheme == "https" else None)


# ---------------------------------------------------------------- event bodies


def encode_body(payload: dict[str, Any]) -> str:
    """The exact text that is signed and sent (and resent): compact, UTF-8, keys sorted."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)


def _account_json(account: Account | None) -> dict[str, Any] | None:
    if account is None:
        return None
    return {"uid": account.uid, "nickname": account.nickname, "type": account.account_type.value}


def audit_payload(
    entry: AuditEntry, partner_uid: str, account: Account | None, cascade_uid: str | None
) -> dict[str, Any]:
    kind = AUDIT_KINDS[entry.action]
    return {
        "id": f"audit-{entry.id}",
        "kind": kind.value,
        "occurredAt": _iso(entry.occurred_at),
        "partner": {"uid": partner_uid},
        "account": _account_json(account),
        "change": {
            "action": entry.action.value,
            "before": entry.before,
            "after": entry.after,
            "reason": entry.reason,
            "cascadeFrom": cascade_uid,
            "method": entry.method.value,
            "operator": {"uid": entry.operator_uid, "name": entry.operator_name, "isRam": entry.operator_is_ram}
            if entry.operator_uid
            else None,
        },
    }


def alert_payload(event: AlertEvent, partner_uid: str, account: Account | None) -> dict[str, Any]:
    kind = WebhookEventKind.ALERT_BREACHED if event.state.value == "BREACHED" else WebhookEventKind.ALERT_RECOVERED
    return {
        "id": f"alert-{event.id}",
        "kind": kind.value,
        "occurredAt": _iso(event.occurred_at),
        "partner": {"uid": partner_uid},
        "account": _account_json(account),
        "change": {
            "alertKind": event.kind.value,
            "state": event.state.value,
            "available": format_money(event.available_cents),
            "threshold": format_money(event.threshold_cents),
        },
    }


# ---------------------------------------------------------------- the dispatcher


def _insert(session: AsyncSession) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def _endpoints_by_partner(session: AsyncSession) -> dict[int, list[WebhookEndpoint]]:
    rows = (await session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(True)))).all()
    result: dict[int, list[WebhookEndpoint]] = {}
    for row in rows:
        result.setdefault(row.partner_id, []).append(row)
    return result


async def _cursor(session: AsyncSession, source: str) -> WebhookCursor | None:
    """The source's cursor row, locked; None when another dispatcher holds it (PostgreSQL SKIP LOCKED)."""
    await session.execute(
        _insert(session)(WebhookCursor)
        .values(source=source, last_id=0)
        .on_conflict_do_nothing(index_elements=["source"])
    )
    stmt = select(WebhookCursor).where(WebhookCursor.source == source).execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return await session.scalar(stmt)


async def skip_unwatched_history(session: AsyncSession) -> None:
    """Move the cursors to the end of the log when no endpoint is enabled anywhere.

    Called when an endpoint is created or enabled: while nobody listened the
    cursors stood still, and the new endpoint must not make the dispatcher
    read (and discard) everything logged meanwhile.
    """
    if await session.scalar(select(exists().where(WebhookEndpoint.enabled.is_(True)))):
        return
    for source, model in LOG_SOURCES:
        cursor = await _cursor(session, source)
        if cursor is not None:
            cursor.last_id = max(cursor.last_id, int(await session.scalar(select(func.max(model.id))) or 0))


def _wanted(endpoint: WebhookEndpoint, kind: WebhookEventKind, occurred_at: datetime | None) -> bool:
    if kind.value not in (endpoint.event_kinds or []):
        return False
    # An endpoint receives what happened after it was created, never the history before it.
    return occurred_at is None or endpoint.created_at is None or _aware(occurred_at) >= _aware(endpoint.created_at)


async def dispatch_once(session: AsyncSession, *, batch: int = DISPATCH_BATCH) -> int:
    """Turn log rows after the cursors into deliveries; return how many deliveries were queued.

    Runs inside the caller's write transaction. Only partners with an
    enabled endpoint cost a row read; the cursor jumps over everyone else's.
    """
    endpoints = await _endpoints_by_partner(session)
    queued = 0
    for source, model in LOG_SOURCES:
        cursor = await _cursor(session, source)
        if cursor is None:
            continue
        # Ids are committed in order (notifications.log): every id up to `top` is final now.
        top = int(await session.scalar(select(func.max(model.id))) or 0)
        if top <= cursor.last_id:
            continue
        if not endpoints:
            cursor.last_id = top
            continue
        conditions = [model.id > cursor.last_id, model.id <= top, model.partner_id.in_(sorted(endpoints))]
        if model is AuditEntry:
            conditions.append(AuditEntry.action.in_(list(AUDIT_KINDS)))
        found = await session.scalars(select(model).where(*conditions).order_by(model.id).limit(batch))
        rows = cast("list[AuditEntry | AlertEvent]", list(found.all()))
        cursor.last_id = rows[-1].id if len(rows) >= batch else top
        if rows:
            queued += await _queue_rows(session, rows, endpoints)
    return queued


async def _queue_rows(session: AsyncSession, rows: Sequence[Any], endpoints: dict[int, list[WebhookEndpoint]]) -> int:
    account_ids = {r.account_id for r in rows} | {
        r.cascade_from_id for r in rows if isinstance(r, AuditEntry) and r.cascade_from_id is not None
    }
    accounts = {a.id: a for a in (await session.scalars(select(Account).where(Account.id.in_(account_ids)))).all()}
    partner_uids = dict(
        (
            await session.execute(select(Partner.id, Partner.uid).where(Partner.id.in_({r.partner_id for r in rows})))
        ).all()
    )
    values: list[dict[str, Any]] = []
    for row in rows:
        partner_uid = partner_uids.get(row.partner_id, "")
        account = accounts.get(row.account_id)
        if isinstance(row, AuditEntry):
            kind = AUDIT_KINDS[row.action]
            cascade = accounts.get(row.cascade_from_id) if row.cascade_from_id is not None else None
            payload = audit_payload(row, partner_uid, account, cascade.uid if cascade is not None else None)
        else:
            payload = alert_payload(row, partner_uid, account)
            kind = WebhookEventKind(payload["kind"])
        for endpoint in endpoints.get(row.partner_id, []):
            if _wanted(endpoint, kind, row.occurred_at):
                values.append(delivery_values(endpoint, payload))
    return await insert_deliveries(session, values)


def delivery_values(endpoint: WebhookEndpoint, payload: dict[str, Any]) -> dict[str, Any]:
    now = _utcnow()
    return {
        "endpoint_id": endpoint.id,
        "partner_id": endpoint.partner_id,
        "event_id": payload["id"],
        "event_kind": payload["kind"],
        "body": encode_body(payload),
        "status": WebhookDeliveryStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


async def insert_deliveries(session: AsyncSession, values: list[dict[str, Any]]) -> int:
    """Insert deliveries, skipping (endpoint, event) pairs that exist already; wake the senders."""
    if not values:
        return 0
    stmt = _insert(session)(WebhookDelivery).values(values)
    stmt = stmt.on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
    await session.execute(stmt)
    event_log.add_topic(session, TOPIC)
    return len(values)


async def queue_event(session: AsyncSession, partner_id: int, payload: dict[str, Any]) -> int:
    """Queue an event that is not in the stored log (an export finishing) for the partner's endpoints."""
    kind = WebhookEventKind(payload["kind"])
    endpoints = (
        await session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.partner_id == partner_id, WebhookEndpoint.enabled.is_(True))
        )
    ).all()
    values = [delivery_values(e, payload) for e in endpoints if _wanted(e, kind, None)]
    return await insert_deliveries(session, values)


async def queue_export_finished(session: AsyncSession, task: Any) -> int:
    """EXPORT_FINISHED for an export task reaching SUCCEEDED or FAILED, in the transaction that finishes it."""
    partner_uid = await session.scalar(select(Partner.uid).where(Partner.id == task.partner_id)) or ""
    payload = {
        "id": f"export-{task.id}",
        "kind": WebhookEventKind.EXPORT_FINISHED.value,
        "occurredAt": _iso(task.finished_at or _utcnow()),
        "partner": {"uid": partner_uid},
        "account": None,
        "change": {
            "exportId": task.id,
            "exportKind": task.kind.value,
            "format": task.format.value,
            "status": task.status.value,
            "rowCount": task.row_count,
            "fileName": task.file_name,
            "error": task.error,
        },
    }
    return await queue_event(session, task.partner_id, payload)


def test_payload(endpoint: WebhookEndpoint, partner_uid: str) -> dict[str, Any]:
    return {
        "id": f"test-{uuid.uuid4().hex}",
        "kind": WebhookEventKind.TEST.value,
        "occurredAt": _iso(_utcnow()),
        "partner": {"uid": partner_uid},
        "account": None,
        "change": {"message": "A test event sent from uidhub.", "endpointUrl": endpoint.url},
    }


# ---------------------------------------------------------------- the sender


@dataclass(frozen=True, slots=True)
class ClaimedEndpoint:
    id: int
    partner_id: int
    url: str
    signing: tuple[str, ...]
    lease: datetime


@dataclass(frozen=True, slots=True)
class PostOutcome:
    ok: bool
    status_code: int | None
    duration_ms: int
    error: str | None


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:ERROR_MAX]


class WebhookSender:
    """Dispatches the log into deliveries and POSTs them; several instances may run at once."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        bus: Bus | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.db = db
        self.settings = settings
        self.bus = bus
        self.clock = clock
        self._own_client = client is None
        self.client = client or make_client(settings)
        self._task: asyncio.Task[None] | None = None

    @property
    def send_budget(self) -> timedelta:
        """Upper bound of one POST: the total timeout plus slack for resolving the host."""
        return timedelta(seconds=self.settings.webhook_timeout_seconds + 5)

    @property
    def retry_window(self) -> timedelta:
        return timedelta(hours=self.settings.webhook_retry_hours)

    def backoff(self, attempts: int) -> timedelta:
        seconds = self.settings.webhook_backoff_seconds * 2 ** max(attempts - 1, 0)
        return timedelta(seconds=min(seconds, MAX_BACKOFF_SECONDS))

    # -- one pass --------------------------------------------------------------

    async def run_once(self) -> int:
        """Dispatch new log rows, then send what is due; return how many attempts were made.

        Without any enabled endpoint a pass is one cheap read: no write
        transaction competes with requests for nothing.
        """
        async with self.db.read() as session:
            active = await session.scalar(select(exists().where(WebhookEndpoint.enabled.is_(True))))
        if not active:
            return 0
        async with self.db.write() as session:
            await dispatch_once(session)
        claimed = await self._claim()
        if not claimed:
            return 0
        counts = await asyncio.gather(*(self._drain(endpoint) for endpoint in claimed))
        return sum(counts)

    async def _claim(self) -> list[ClaimedEndpoint]:
        now = self.clock()
        head = aliased(WebhookDelivery)
        earlier = aliased(WebhookDelivery)
        due_head = exists(
            select(head.id).where(
                head.endpoint_id == WebhookEndpoint.id,
                head.status == WebhookDeliveryStatus.PENDING,
                head.next_attempt_at <= now,
                ~exists(
                    select(earlier.id).where(
                        earlier.endpoint_id == WebhookEndpoint.id,
                        earlier.status == WebhookDeliveryStatus.PENDING,
                        earlier.id < head.id,
                    )
                ),
            )
        )
        stmt = (
            select(WebhookEndpoint)
            .where(
                WebhookEndpoint.enabled.is_(True),
                or_(WebhookEndpoint.claimed_until.is_(None), WebhookEndpoint.claimed_until < now),
                due_head,
            )
            .order_by(WebhookEndpoint.id)
            .limit(CLAIM_ENDPOINTS)
        )
        if self.db.is_postgres:
            stmt = stmt.with_for_update(skip_locked=True, of=WebhookEndpoint)
        lease = now + self.send_budget * PER_CLAIM + LEASE_MARGIN
        async with self.db.write() as session:
            rows = list((await session.scalars(stmt.execution_options(populate_existing=True))).all())
            claimed = []
            for row in rows:
                row.claimed_until = lease
                claimed.append(
                    ClaimedEndpoint(
                        id=row.id,
                        partner_id=row.partner_id,
                        url=row.url,
                        signing=tuple(
                            signing_secrets(row.secret, row.previous_secret, row.previous_secret_expires_at, now)
                        ),
                        lease=lease,
                    )
                )
        return claimed

    async def _drain(self, endpoint: ClaimedEndpoint) -> int:
        """Send the endpoint's due deliveries in order until one fails, none is due, or the lease runs short.

        The endpoint is ours while the lease lasts, so its queue is read once
        per claim; deliveries queued meanwhile wait for the next pass.
        """
        attempts = 0
        try:
            for delivery in await self._queue(endpoint.id):
                if self.clock() + self.send_budget + START_MARGIN > endpoint.lease:
                    break
                if _aware(delivery.next_attempt_at) > self.clock():
                    break  # the head waits for its retry, and everything behind it waits too
                outcome = await self._post(endpoint, delivery)
                attempts += 1
                recorded = await self._record_shielded(endpoint, delivery, outcome)
                if not (recorded and outcome.ok):
                    break
        finally:
            await self._release(endpoint)
        return attempts

    async def _queue(self, endpoint_id: int) -> list[WebhookDelivery]:
        async with self.db.read() as session:
            rows = await session.scalars(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.endpoint_id == endpoint_id,
                    WebhookDelivery.status == WebhookDeliveryStatus.PENDING,
                )
                .order_by(WebhookDelivery.id)
                .limit(PER_CLAIM)
            )
            return list(rows.all())

    async def _post(self, endpoint: ClaimedEndpoint, delivery: WebhookDelivery) -> PostOutcome:
        """One signed POST, bounded by the total timeout; never raises (but CancelledError)."""
        started = time.monotonic()
        body = delivery.body.encode("utf-8")
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature_header(endpoint.signing, timestamp, body),
            EVENT_ID_HEADER: delivery.event_id,
            EVENT_KIND_HEADER: delivery.event_kind,
            DELIVERY_ID_HEADER: str(delivery.id),
        }

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            target = await resolve_target(
                endpoint.url,
                allow_http_loopback=self.settings.webhook_allow_http_loopback,
                allow_private=self.settings.webhook_allow_private,
            )
            if target.host_header:
                headers["Host"] = target.host_header
            extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                async with self.client.stream(
                    "POST", target.url, content=body, headers=headers, extensions=extensions
                ) as response:
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= RESPONSE_CAP_BYTES:
                            break
                    status = response.status_code
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return PostOutcome(False, None, elapsed(), f"timed out after {self.settings.webhook_timeout_seconds:g}s")
        except UnsafeUrl as exc:
            return PostOutcome(False, None, elapsed(), str(exc)[:ERROR_MAX])
        except httpx.TimeoutException as exc:
            return PostOutcome(False, None, elapsed(), _error_text(exc))
        except (httpx.HTTPError, OSError) as exc:
            return PostOutcome(False, None, elapsed(), _error_text(exc))
        if 200 <= status < 300:
            return PostOutcome(True, status, elapsed(), None)
        if 300 <= status < 400:
            return PostOutcome(False, status, elapsed(), f"HTTP {status}: redirects are not followed")
        return PostOutcome(False, status, elapsed(), f"HTTP {status}")

    async def _record_shielded(
        self, endpoint: ClaimedEndpoint, delivery: WebhookDelivery, outcome: PostOutcome
    ) -> bool:
        """Record the attempt even if the sender is cancelled meanwhile (a 2xx must become SUCCEEDED)."""
        task = asyncio.ensure_future(self._record(endpoint, delivery, outcome))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await task
            raise

    async def _record(self, endpoint: ClaimedEndpoint, delivery: WebhookDelivery, outcome: PostOutcome) -> bool:
        """Store the attempt, the delivery's new state and the endpoint's health, under the endpoint lease."""
        now = self.clock()
        async with self.db.write() as session:
            row = await session.scalar(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint.id, WebhookEndpoint.claimed_until == endpoint.lease)
                .execution_options(populate_existing=True)
            )
            if row is None:
                log.warning("webhook endpoint %d: lease lost before delivery %d was recorded", endpoint.id, delivery.id)
                return False
            attempts = delivery.attempts + 1
            values: dict[str, Any] = {"attempts": attempts, "last_status_code": outcome.status_code}
            next_at: datetime | None = None
            if outcome.ok:
                values |= {"status": WebhookDeliveryStatus.SUCCEEDED, "finished_at": now, "last_error": None}
                row.failing_since = None
            else:
                first_failed = _aware(delivery.first_failed_at) if delivery.first_failed_at else now
                values |= {"last_error": outcome.error, "first_failed_at": first_failed}
                if now - first_failed >= self.retry_window:
                    values |= {"status": WebhookDeliveryStatus.FAILED, "finished_at": now}
                else:
                    next_at = now + self.backoff(attempts)
                    values["next_attempt_at"] = next_at
                row.failing_since = row.failing_since or now
                if row.enabled and now - _aware(row.failing_since) >= self.retry_window:
                    await self._disable(session, row, now)
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            session.add(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    attempted_at=now,
                    status_code=outcome.status_code,
                    duration_ms=outcome.duration_ms,
                    error=outcome.error,
                    next_attempt_at=next_at,
                )
            )
        signals.webhook_attempted(outcome.ok, values.get("status") == WebhookDeliveryStatus.FAILED)
        if outcome.ok:
            log.info("webhook delivery %d (%s) delivered to endpoint %d", delivery.id, delivery.event_id, endpoint.id)
        else:
            log.info(
                "webhook delivery %d attempt %d failed (%s); next attempt %s",
                delivery.id,
                attempts,
                outcome.error,
                next_at.isoformat() if next_at else "none (given up)",
            )
        return True

    async def _disable(self, session: AsyncSession, endpoint: WebhookEndpoint, now: datetime) -> None:
        """Turn a long-failing endpoint off and tell the partner's alert emails, once (the enabled→disabled step)."""
        since = _aware(endpoint.failing_since or now)
        endpoint.enabled = False
        endpoint.disabled_reason = (
            f"Disabled automatically: every delivery failed since {_iso(since)} "
            f"({self.settings.webhook_retry_hours:g} hours)."
        )
        log.warning("webhook endpoint %d disabled: failing since %s", endpoint.id, _iso(since))
        partner = await session.get(Partner, endpoint.partner_id)
        recipients = list(partner.alert_emails or []) if partner is not None else []
        if not recipients:
            return
        subject = "[uidhub] Webhook endpoint disabled after repeated failures"
        text = (
            f"The webhook endpoint {endpoint.url} of partner {partner.uid if partner else ''} has failed every "
            f"delivery since {_iso(since)} and was disabled.\n\n"
            "Events are no longer sent to it. Fix the receiver, then enable the endpoint again "
            "(updateWebhookEndpoint with enabled: true); deliveries that were still pending resume in order.\n\n"
            f"{self.settings.console_url}\n"
        )
        html = "<p>" + text.replace("&", "&amp;").replace("<", "&lt;").replace("\n\n", "</p><p>") + "</p>"
        session.add(
            EmailNotification(
                partner_id=endpoint.partner_id,
                alert_event_id=None,
                account_id=None,
                recipients=recipients,
                subject=subject,
                body_text=text,
                body_html=html,
                message_id=new_message_id(sender_domain(self.settings.smtp_sender)),
                status=NotificationStatus.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        event_log.add_topic(session, "outbox")

    async def _release(self, endpoint: ClaimedEndpoint) -> None:
        stmt = (
            update(WebhookEndpoint)
            .where(and_(WebhookEndpoint.id == endpoint.id, WebhookEndpoint.claimed_until == endpoint.lease))
            .values(claimed_until=None)
            .execution_options(synchronize_session=False)
        )
        try:
            async with self.db.write() as session:
                await session.execute(stmt)
        except Exception as exc:  # the lease runs out on its own; nothing is lost
            log.warning("could not release webhook endpoint %d (%s); it waits for its lease", endpoint.id, exc)

    # -- the loop --------------------------------------------------------------

    async def run_forever(self) -> None:
        async def one_pass() -> bool:
            return await self.run_once() > 0

        # Woken by new deliveries and by every log commit (audit/alert topics are per partner, so poll too).
        await Wakeup(self.bus, TOPIC, self.settings.webhook_poll_seconds).run_passes(one_pass, "webhooks")

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run_forever(), name="uidhub-webhook-sender")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_client:
            await self.client.aclose()


def make_client(settings: Settings) -> httpx.AsyncClient:
    """One pooled client per sender: connect 5 s, the whole request bounded separately; no redirects."""
    timeout = httpx.Timeout(settings.webhook_timeout_seconds, connect=min(5.0, settings.webhook_timeout_seconds))
    return httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
        trust_env=False,
    )

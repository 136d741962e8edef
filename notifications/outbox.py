"""The outbox sender: delivers stored EmailNotification rows over SMTP.

Why an outbox: an alert email is inserted in the same transaction as the
event that caused it (notifications.log), so it exists exactly when the event
does, and the SMTP conversation happens later, outside any business
transaction, with retries.

Claiming. One short write transaction selects due rows (PENDING,
`next_attempt_at <= now`, no live lease) in id order and stamps them with a
lease (`claimed_until`). On PostgreSQL the select is `FOR UPDATE SKIP LOCKED`,
so concurrent senders on any number of workers take disjoint rows without
waiting on each other; on SQLite write transactions are serialised by
`BEGIN IMMEDIATE` (Database.session(write=True)), which makes the same
select-then-update safe. Every later write about a row is guarded by
`claimed_until = <our lease>`: a sender whose lease ran out (and whose row was
taken over) can no longer change it.

Never twice, and the one window that remains. A row is sent only by the
sender holding its lease, and a send starts only while the lease has at least
one whole send budget plus a safety margin left; the send itself is bounded
by that budget. So a live sender always records its outcome before anyone
else may take the row over, and a row recorded SENT is never sent again.
What no outbox can close: if the process dies (or loses the database) after
the SMTP server accepted the message but before the SENT update commits, the
lease expires and another sender delivers it again. That is at-least-once in
that crash window and exactly-once otherwise; we prefer it to at-most-once,
which would silently lose alerts. The window is kept to one UPDATE, and every
copy carries the same stored Message-ID, so receiving systems can drop the
duplicate. Leases compare clocks of different hosts: keep them NTP-synced
(the margin absorbs small skew).

Retries. A failed send (connection refused, timeout, 4xx/5xx answer) counts
an attempt, stores the error and is retried after
`smtp_backoff_seconds * 2**(attempts-1)` (at most an hour); after
`smtp_max_attempts` attempts the row is FAILED with its last error.

Maybe sent. Once the whole message is written, the server's reply to its end
may take long (it is storing or scanning the message): RFC 5321 advises the
client to wait 10 minutes for it, and so do we (`smtp_data_timeout_seconds`;
every other step waits `smtp_timeout_seconds`). If that reply still does not
come (a timeout or a lost connection after the message went out), the server
may have the message: the row is marked `maybe_sent_at` and retried ONCE more,
later (backoff), with the same Message-ID, so a receiving system can drop a
duplicate. Whatever that retry comes to short of success, the row ends FAILED
with `maybe_sent_at` set and a last_error saying that delivery is uncertain;
it is never tried again.

Without `smtp_host` nothing is sent: rows stay PENDING (and are logged once)
until the process is restarted with SMTP configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import TYPE_CHECKING, Any

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import Default, SMTPStatus
from sqlalchemy import func, or_, select, update

from models.enums import NotificationStatus
from models.tables import EmailNotification
from notifications.bus import Wakeup
from uidhub.metrics import email_attempted

if TYPE_CHECKING:
    from notifications.bus import Bus
    from uidhub.db import Database
    from uidhub.settings import Settings

log = logging.getLogger(__name__)

TOPIC = "outbox"
MAX_BACKOFF_SECONDS = 3600.0
ERROR_MAX = 1000
# Lease slack beyond the send budgets: covers the database writes around the
# sends and small clock skew between workers.
LEASE_MARGIN = timedelta(seconds=30)
# A send starts only while the lease has a whole send budget plus this left,
# so its outcome is recorded before the lease can run out.
START_MARGIN = timedelta(seconds=15)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ClaimedEmail:
    """A snapshot of a claimed row: all a send needs, detached from any session."""

    id: int
    recipients: list[str]
    subject: str
    body_text: str
    body_html: str
    message_id: str
    attempts: int
    created_at: datetime | None
    #: An earlier attempt may have delivered it (no final reply after DATA): this is its one retry.
    maybe_sent: bool = False


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one SMTP attempt came to; `error` is kept as last_error (a note when sent)."""

    sent: bool
    error: str | None = None
    permanent: bool = False
    #: The whole message went out but its final reply never came: the server may have it.
    maybe_sent: bool = False


def build_message(email: ClaimedEmail, sender: str) -> EmailMessage:
    """The MIME message: text/plain with a text/html alternative and the row's stable Message-ID.

    Date is the row's creation time, not the time of this attempt, so every
    retry (and a re-send after a crash) is byte-for-byte the same message.
    """
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(email.recipients)
    msg["Subject"] = email.subject
    msg["Message-ID"] = email.message_id
    msg["Date"] = format_datetime(email.created_at or _utcnow())
    # RFC 3834: tells auto-responders (vacation replies) not to answer.
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(email.body_text)
    msg.add_alternative(email.body_html, subtype="html")
    return msg


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:ERROR_MAX]


class DataTimeoutSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, waiting for the reply to the end of the message as RFC 5321 advises.

    aiosmtplib's DATA waits for both of its replies (354, then the final one)
    with the command timeout; a relay that takes longer than that to store
    the message would get it again on every retry. Here the 354 waits the
    command timeout and the final reply `data_timeout`, and
    `awaiting_final_reply` tells the caller whether a failure came after the
    whole message was written (so the server may have it).
    """

    def __init__(self, *args: Any, data_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_timeout = data_timeout
        self.awaiting_final_reply = False

    async def data(self, message: str | bytes, /, *, timeout: Any = Default.token) -> SMTPResponse:
        if isinstance(message, str):
            message = message.encode("ascii")
        # The same transformations as aiosmtplib's own DATA: CRLF line ends, dot-stuffing, the final dot.
        payload = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"
        start = await self.execute_command(b"DATA", timeout=timeout)
        if start.code != SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = self.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.awaiting_final_reply = True
        protocol.write(payload)
        try:
            response = await protocol.read_response(timeout=self.data_timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()  # the reply may still come: never pair it with a later command
            raise
        self.awaiting_final_reply = False  # answered: whatever it says, the outcome is known
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response


class SmtpLink:
    """One SMTP connection kept for the sends of one pass.

    A connection per email (connect, EHLO, STARTTLS, AUTH, ..., QUIT) costs
    several round trips and a TLS handshake each time, which against a remote
    relay outweighs the message itself. The connection lives for one pass
    only, so no idle connection waits for a server to time it out. Before it
    is reused it is checked with NOOP: a server that closed it or answers 421
    gets a fresh connection, which is safe because nothing of the message
    went out on the old one yet. After any failure (and a timeout or
    cancellation) the connection's state is unknown, so it is dropped and the
    next send connects anew.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: DataTimeoutSMTP | None = None
        #: Set when the last send failed after its whole message went out (see DataTimeoutSMTP).
        self.maybe_sent = False

    async def send(self, message: EmailMessage, recipients: list[str]) -> dict[str, Any]:
        """Send over the pass's connection (opening one if needed); return the refused recipients."""
        settings = self.settings
        self.maybe_sent = False
        client: DataTimeoutSMTP | None = None
        try:
            client = await self._ready()
            client.awaiting_final_reply = False
            refused, _response = await client.send_message(
                message,
                sender=parseaddr(settings.smtp_sender)[1] or settings.smtp_sender,
                recipients=recipients,
            )
        except BaseException:
            # Also the whole send's deadline cancelling the wait for the final reply.
            self.maybe_sent = client is not None and client.awaiting_final_reply
            self.drop()
            raise
        return refused

    async def _ready(self) -> DataTimeoutSMTP:
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.noop()
                return self._client
            except (aiosmtplib.SMTPException, OSError) as exc:
                log.info("SMTP connection not reusable (%s); reconnecting", _error_text(exc))
        self.drop()
        settings = self.settings
        client = DataTimeoutSMTP(
            data_timeout=settings.smtp_data_timeout_seconds,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            start_tls=settings.smtp_starttls,
            timeout=settings.smtp_timeout_seconds,
        )
        await client.connect()
        self._client = client
        return client

    def drop(self) -> None:
        """Close the connection without a goodbye (its state is unknown)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        """End the pass's connection politely (QUIT); never raises."""
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            await client.quit(timeout=self.settings.smtp_timeout_seconds)
        except Exception:  # the messages are out; a failed goodbye changes nothing
            client.close()


class OutboxSender:
    """Claims due outbox rows and sends them; several instances may run at once."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        bus: Bus | None = None,
        *,
        batch_size: int = 20,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.db = db
        self.settings = settings
        self.bus = bus
        self.batch_size = batch_size
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._told_unconfigured = False
        self._last_logged_id = 0

    # -- configuration -------------------------------------------------------

    @property
    def configured(self) -> bool:
        """True when an SMTP host is set; without one nothing is ever sent."""
        return bool(self.settings.smtp_host)

    @property
    def command_budget(self) -> timedelta:
        """Bound of one send's steps other than the wait for the final reply after DATA.

        aiosmtplib's timeout applies per step, so the conversation is capped as a whole.
        """
        return timedelta(seconds=self.settings.smtp_timeout_seconds * 3)

    @property
    def send_budget(self) -> timedelta:
        """Hard upper bound of one SMTP send: its steps, plus the wait for the reply to the end of the message."""
        return self.command_budget + timedelta(seconds=self.settings.smtp_data_timeout_seconds)

    def lease_for(self, rows: int) -> timedelta:
        """How long a pass keeps `rows`: each send's steps, and one long final-reply wait.

        Not `rows` long waits: a crashed sender's rows would wait hours for its
        lease. A slow reply uses up the slack, and the rows whose send no
        longer fits are released for the next pass (see `run_once`).
        """
        return self.command_budget * rows + timedelta(seconds=self.settings.smtp_data_timeout_seconds) + LEASE_MARGIN

    def backoff(self, attempts: int) -> timedelta:
        """Delay before the next try after `attempts` failed ones: exponential, capped at an hour."""
        seconds = self.settings.smtp_backoff_seconds * 2 ** max(attempts - 1, 0)
        return timedelta(seconds=min(seconds, MAX_BACKOFF_SECONDS))

    # -- one pass ------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim up to `batch_size` due rows, send them, record the outcomes; return how many were processed.

        "Processed" counts rows whose attempt was recorded (sent or failed).
        Rows that were claimed but not attempted (the lease grew too short, or
        the task was cancelled) are released at once for the next pass.
        """
        if not self.configured:
            await self._report_unconfigured()
            return 0
        claimed, lease = await self._claim()
        if not claimed or lease is None:
            return 0
        pending = list(claimed)
        processed = 0
        link = SmtpLink(self.settings)
        try:
            while pending:
                email = pending[0]
                if self.clock() + self.send_budget + START_MARGIN > lease:
                    log.info("outbox lease too short for another send; releasing %d rows", len(pending))
                    break
                try:
                    outcome = await self._send(link, email)
                except asyncio.CancelledError:
                    if link.maybe_sent:  # stopped while the server may be storing it: retry once, not freely
                        pending.pop(0)
                        stopped = "stopped while waiting for the reply after DATA, it may have been delivered"
                        await self._record_shielded(email, lease, SendOutcome(False, stopped, maybe_sent=True))
                    raise
                # From here the row is ours to record, never to release: a
                # release after an accepted send would let it go out twice.
                pending.pop(0)
                await self._record_shielded(email, lease, outcome)
                processed += 1
        finally:
            try:
                if pending:
                    await self._release([email.id for email in pending], lease)
            finally:
                await link.close()
        return processed

    async def _claim(self) -> tuple[list[ClaimedEmail], datetime | None]:
        """Take due rows under a fresh lease in one short write transaction."""
        now = self.clock()
        stmt = (
            select(EmailNotification)
            .where(
                EmailNotification.status == NotificationStatus.PENDING,
                EmailNotification.next_attempt_at <= now,
                or_(EmailNotification.claimed_until.is_(None), EmailNotification.claimed_until < now),
            )
            .order_by(EmailNotification.id)
            .limit(self.batch_size)
        )
        if self.db.is_postgres:
            stmt = stmt.with_for_update(skip_locked=True)
        async with self.db.write() as session:
            rows = list((await session.scalars(stmt)).all())
            if not rows:
                return [], None
            lease = now + self.lease_for(len(rows))
            for row in rows:
                row.claimed_until = lease
            claimed = [
                ClaimedEmail(
                    id=row.id,
                    recipients=list(row.recipients or []),
                    subject=row.subject,
                    body_text=row.body_text,
                    body_html=row.body_html,
                    message_id=row.message_id,
                    attempts=row.attempts or 0,
                    created_at=row.created_at,
                    maybe_sent=row.maybe_sent_at is not None,
                )
                for row in rows
            ]
        return claimed, lease

    async def _send(self, link: SmtpLink, email: ClaimedEmail) -> SendOutcome:
        """One message over the pass's connection, bounded by `send_budget`; never raises (but CancelledError)."""
        if not email.recipients:
            return SendOutcome(sent=False, error="no recipients", permanent=True)
        try:
            message = build_message(email, self.settings.smtp_sender)
            async with asyncio.timeout(self.send_budget.total_seconds()):
                refused = await link.send(message, email.recipients)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if link.maybe_sent:
                error = f"no reply after the whole message was sent, it may have been delivered: {_error_text(exc)}"
                return SendOutcome(sent=False, error=error[:ERROR_MAX], maybe_sent=True)
            return SendOutcome(sent=False, error=_error_text(exc))
        note = None
        if refused:
            # Some recipients were refused, the others took it: resending would
            # duplicate it for them, so it counts as sent, with a note.
            note = _error_text(
                Exception("some recipients refused: " + "; ".join(f"{rcpt}: {resp}" for rcpt, resp in refused.items()))
            )
            log.warning("notification %d sent, but %s", email.id, note)
        return SendOutcome(sent=True, error=note)

    async def _record_shielded(self, email: ClaimedEmail, lease: datetime, outcome: SendOutcome) -> None:
        """Record an outcome even when the sender is cancelled meanwhile (an accepted send must become SENT)."""
        task = asyncio.ensure_future(self._record(email, lease, outcome))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await task
            raise

    async def _record(self, email: ClaimedEmail, lease: datetime, outcome: SendOutcome) -> None:
        """Store the outcome, guarded by our lease so an expired sender cannot overwrite a newer state."""
        now = self.clock()
        attempts = email.attempts + 1
        guard = (EmailNotification.id == email.id, EmailNotification.claimed_until == lease)
        if outcome.sent:
            values: dict[str, object] = {
                "status": NotificationStatus.SENT,
                "sent_at": now,
                "attempts": attempts,
                "claimed_until": None,
                "last_error": outcome.error,
            }
        elif email.maybe_sent:
            # This was the one retry after an attempt that may have delivered it: never again.
            values = {
                "status": NotificationStatus.FAILED,
                "attempts": attempts,
                "claimed_until": None,
                "last_error": _error_text(
                    Exception(f"delivery uncertain: an earlier attempt may have delivered {email.message_id}; "
                              f"its one retry failed too: {outcome.error}")
                ),
            }
        elif outcome.maybe_sent:
            # Retried once, later, with the same Message-ID (even after the last regular attempt).
            values = {
                "attempts": attempts,
                "claimed_until": None,
                "last_error": outcome.error,
                "maybe_sent_at": now,
                "next_attempt_at": now + self.backoff(attempts),
            }
        elif outcome.permanent or attempts >= self.settings.smtp_max_attempts:
            values = {
                "status": NotificationStatus.FAILED,
                "attempts": attempts,
                "claimed_until": None,
                "last_error": outcome.error,
            }
        else:
            values = {
                "attempts": attempts,
                "claimed_until": None,
                "last_error": outcome.error,
                "next_attempt_at": now + self.backoff(attempts),
            }
        stmt = update(EmailNotification).where(*guard).values(**values).execution_options(synchronize_session=False)
        async with self.db.write() as session:
            result = await session.execute(stmt)
            updated = result.rowcount  # type: ignore[attr-defined]
        email_attempted(outcome.sent, final=values.get("status") == NotificationStatus.FAILED)
        if not updated:
            log.warning("notification %d: lease lost before its outcome was recorded", email.id)
        elif outcome.sent:
            log.info("notification %d sent (%s)", email.id, email.message_id)
        elif values.get("status") == NotificationStatus.FAILED:
            log.error("notification %d FAILED after %d attempts: %s", email.id, attempts, outcome.error)
        else:
            log.warning(
                "notification %d attempt %d failed (%s); retrying in %s",
                email.id,
                attempts,
                outcome.error,
                self.backoff(attempts),
            )

    async def _release(self, ids: list[int], lease: datetime) -> None:
        """Give unattempted rows back at once instead of letting them wait for the lease to expire."""
        stmt = (
            update(EmailNotification)
            .where(EmailNotification.id.in_(ids), EmailNotification.claimed_until == lease)
            .values(claimed_until=None)
            .execution_options(synchronize_session=False)
        )
        try:
            async with self.db.write() as session:
                await session.execute(stmt)
        except Exception as exc:  # the lease expires on its own; nothing is lost
            log.warning("could not release %d outbox rows (%s); they wait for their lease", len(ids), exc)

    async def _report_unconfigured(self) -> None:
        """Say once that SMTP is off, and sum up in one line the notifications that stay PENDING because of it.

        One line per pass, never one per email: a demo restart has dozens queued, and a line each buried the
        server's start-up (and the token printed after it).
        """
        if not self._told_unconfigured:
            self._told_unconfigured = True
            log.info("SMTP is not configured (UIDHUB_SMTP_HOST unset): alert emails stay PENDING in the outbox")
        stmt = select(
            func.count(EmailNotification.id), func.min(EmailNotification.id), func.max(EmailNotification.id)
        ).where(EmailNotification.status == NotificationStatus.PENDING, EmailNotification.id > self._last_logged_id)
        try:
            async with self.db.read() as session:
                count, first, last = (await session.execute(stmt)).one()
        except Exception as exc:
            log.warning("could not list pending notifications: %s", exc)
            return
        if not count:
            return
        if count == 1:
            log.info("notification %d kept PENDING (no SMTP); the notifications query lists it", first)
        else:
            log.info("%d notifications kept PENDING (no SMTP), ids %d to %d; the notifications query lists them",
                     count, first, last)
        self._last_logged_id = last

    # -- the loop ------------------------------------------------------------

    async def run_forever(self) -> None:
        """Run passes until cancelled; between passes wait for an "outbox" wake-up or the poll interval.

        An error in a pass (the database restarting) is logged and retried on
        the next pass rather than ending the sender.
        """

        async def one_pass() -> bool:
            return await self.run_once() >= self.batch_size  # a full batch: probably more due

        await Wakeup(self.bus, TOPIC, self.settings.sender_poll_seconds).run_passes(one_pass, "outbox")

    def start(self) -> asyncio.Task[None]:
        """Start `run_forever` as a task (idempotent while it runs) and return it."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run_forever(), name="uidhub-outbox-sender")
        return self._task

    async def stop(self) -> None:
        """Cancel the loop and wait for it; an in-flight outcome is still recorded, unattempted rows released."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
